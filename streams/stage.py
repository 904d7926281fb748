"""A consume-transform-produce stage on plain aiokafka, exactly once by transactions.

Subclasses own per-partition state and say how to restore it and how to turn a batch
into output records; this class does the rest: a read-committed consumer group, one
transactional producer per worker (its id fences the previous incarnation of the same
worker), a lock so that a rebalance waits for the batch in flight to commit, restoring
state from a compacted changelog on assignment, and one transaction per batch holding
all outputs, the state changelog records and the input offsets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.structs import TopicPartition

from streams.kafka_io import BatchWriter, raw_records
from streams.settings import Settings

log = logging.getLogger(__name__)

State = TypeVar("State")


async def read_partitions(
    options: dict[str, Any], topic: str, partitions: list[int],
    on_record: Callable[[int, Any], None],
) -> int:
    """Read committed records of some partitions from the start to the current end."""
    reader = AIOKafkaConsumer(
        isolation_level="read_committed", enable_auto_commit=False,
        value_deserializer=raw_records, **options,
    )
    await reader.start()
    records = 0
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        ends = await reader.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await reader.getmany(*remaining, timeout_ms=1000)
            for tp, messages in batch.items():
                for message in messages:
                    records += 1
                    on_record(tp.partition, message)
            for tp in list(remaining):
                if await reader.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await reader.stop()
    return records


class TransactionalStage(ConsumerRebalanceListener, ABC, Generic[State]):
    name: str = "stage"

    def __init__(
        self, settings: Settings, input_topic: str, state_topic: str, max_batch: int
    ) -> None:
        self.settings = settings
        self.input_topic = input_topic
        self.state_topic = state_topic
        self.max_batch = max_batch
        self.group_id = f"{settings.app_id}-{self.name}"
        self.partitions: dict[int, State] = {}
        self.input_partition_count = 0
        self._options = settings.kafka_client_options()
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._started = False
        self.consumer: AIOKafkaConsumer
        self.producer: AIOKafkaProducer

    # --- what a stage says ------------------------------------------------------------
    @abstractmethod
    def new_state(self, partition: int) -> State: ...

    @abstractmethod
    def restore_record(self, state: State, key: bytes | None, value: bytes | None) -> None: ...

    @abstractmethod
    async def process(
        self, tp: TopicPartition, state: State, messages: list[Any], writer: BatchWriter
    ) -> None:
        """Turn one partition's messages into records (outputs and state changelog)."""

    async def after_batch(self, writer: BatchWriter) -> None:
        """Records to add to every transaction, with or without input (e.g. watermarks)."""

    def committed(self, events: int, seconds: float) -> None:
        """Called after each committed transaction: count what it did."""

    async def on_release(self, writer: BatchWriter, partitions: list[int]) -> None:
        """Records to publish as this worker gives partitions up (revoke or stop)."""

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        # aiokafka clients bind to the running loop, so they are made here, not in __init__
        options = self._options
        self.consumer = AIOKafkaConsumer(
            group_id=self.group_id,
            # static membership: a restarted worker takes its partitions straight back
            # instead of waiting out the dead incarnation's session
            group_instance_id=f"{self.group_id}-{self.settings.worker_id}",
            session_timeout_ms=self.settings.session_timeout_ms,
            heartbeat_interval_ms=max(1000, self.settings.session_timeout_ms // 4),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            value_deserializer=raw_records,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
            **options,
        )
        self.producer = AIOKafkaProducer(
            transactional_id=f"{self.group_id}-{self.settings.worker_id}",
            transaction_timeout_ms=self.settings.transaction_timeout_ms,
            linger_ms=5,
            max_batch_size=1024 * 1024,
            max_request_size=16 * 1024 * 1024,
            **options,
        )
        # The producer first: its InitProducerId fences a previous incarnation of this
        # worker and aborts that one's open transaction before we restore any state.
        await self.producer.start()
        await self.consumer.start()
        partitions = self.consumer.partitions_for_topic(self.input_topic)
        if not partitions:
            await self.consumer._client.force_metadata_update()
            partitions = self.consumer.partitions_for_topic(self.input_topic)
        self.input_partition_count = len(partitions or ())
        self.consumer.subscribe([self.input_topic], listener=self)
        self._started = True
        log.info("%s started: %d input partitions, group %s", self.name,
                 self.input_partition_count, self.group_id)

    async def stop(self) -> None:
        self._stopping.set()
        async with self._lock:  # the batch in flight commits first
            if self._started:
                await self._release(sorted(self.partitions))
                await self.consumer.stop()
                await self.producer.stop()
                self._started = False

    async def run(self) -> None:
        while not self._stopping.is_set():
            batch = await self.consumer.getmany(
                timeout_ms=self.settings.ingest_poll_timeout_ms, max_records=self.max_batch
            )
            async with self._lock:
                if self._stopping.is_set():
                    break
                await self._transact(batch)

    # --- rebalancing ----------------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._lock:  # waits for an in-flight batch to commit
            owned = sorted(tp.partition for tp in revoked if tp.partition in self.partitions)
            if owned and not self._stopping.is_set():
                await self._release(owned)
            for tp in revoked:
                self.partitions.pop(tp.partition, None)

    async def _release(self, partitions: list[int]) -> None:
        """Publish what :meth:`on_release` says, in a transaction of its own. Best effort:
        a worker that cannot reach the broker any more still stops (and one that dies
        cannot say anything at all), so nothing may depend on it for correctness."""
        if not partitions:
            return
        writer = BatchWriter(self.producer)
        try:
            await self.producer.begin_transaction()
            await self.on_release(writer, partitions)
            await writer.flush()
            await self.producer.commit_transaction()
            log.info("%s released partitions %s", self.name, partitions)
        except Exception:  # logged, not raised: see the docstring
            log.warning("%s could not publish its release of partitions %s", self.name,
                        partitions, exc_info=True)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self._lock:
            fresh = [tp.partition for tp in assigned if tp.partition not in self.partitions]
            if not fresh:
                return
            states = {p: self.new_state(p) for p in fresh}
            records = await read_partitions(
                self._options, self.state_topic, fresh,
                lambda p, m: self.restore_record(states[p], m.key, m.value),
            )
            self.partitions.update(states)
            log.info("%s restored partitions %s from %d changelog records", self.name,
                     sorted(fresh), records)

    # --- one transaction per batch ------------------------------------------------------
    async def _transact(self, batch: dict[TopicPartition, list[Any]]) -> None:
        started = time.perf_counter()
        writer = BatchWriter(self.producer)
        offsets: dict[TopicPartition, int] = {}
        events = 0
        await self.producer.begin_transaction()
        try:
            for tp, messages in batch.items():
                state = self.partitions.get(tp.partition)
                if state is None or not messages:
                    continue  # revoked between fetch and now: the new owner redoes it
                events += len(messages)
                await self.process(tp, state, messages, writer)
                offsets[tp] = messages[-1].offset + 1
            await self.after_batch(writer)
            if offsets:
                await self.producer.send_offsets_to_transaction(offsets, self.group_id)
            await writer.flush()
            await self.producer.commit_transaction()
        except BaseException:
            # A failed transaction leaves in-memory state ahead of Kafka: let the
            # worker die and restart from the committed state rather than guess.
            log.exception("%s transaction failed; stopping the worker", self.name)
            raise
        self.committed(events, time.perf_counter() - started)
