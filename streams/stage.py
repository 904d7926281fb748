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
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from streams.kafka_io import BatchWriter, raw_records
from streams.outage import RETRY_FIRST_SECONDS, Outage, OutageReport, is_fatal, keep_trying
from streams.settings import Settings

log = logging.getLogger(__name__)

STALLED_AFTER_SECONDS = 5.0  # a batch in flight this long: the broker is not answering
CLOSE_TIMEOUT_SECONDS = 5.0

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


class _Rebalance(ConsumerRebalanceListener):
    """The rebalance callbacks of one consumer incarnation. After a restart, a callback
    of the closed consumer (it may have waited for the stage's lock meanwhile) must
    neither restore nor release anything: it is told apart by its incarnation."""

    def __init__(self, stage: TransactionalStage[Any], incarnation: int) -> None:
        self.stage, self.incarnation = stage, incarnation

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.stage.on_partitions_revoked(revoked, self.incarnation)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.stage.on_partitions_assigned(assigned, self.incarnation)


class TransactionalStage(ABC, Generic[State]):
    name: str = "stage"

    def __init__(
        self, settings: Settings, input_topic: str, state_topic: str, max_batch: int,
        source: str = "", on_outage: Callable[[OutageReport], object] | None = None,
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
        self._incarnation = 0  # of the consumer: see _Rebalance
        self.restarts = 0
        self.health = Outage(self.name, source, on_outage or (lambda report: None))
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

    async def before_batch(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Broker round trips a batch needs, made before its transaction opens."""

    async def after_batch(self, writer: BatchWriter) -> None:
        """Records to add to every transaction, with or without input (e.g. watermarks)."""

    def committed(self, events: int, seconds: float) -> None:
        """Called after each committed transaction: count what it did."""

    async def on_release(self, writer: BatchWriter, partitions: list[int]) -> None:
        """Records to publish as this worker gives partitions up (revoke or stop)."""

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect; while Kafka cannot be reached, keep trying (one log line, see
        :class:`~streams.outage.Outage`). Only an error retrying cannot mend (bad
        credentials, a missing permission) is raised."""
        await keep_trying(self.health, "connecting", self._connect, self._close_clients)

    async def _connect(self) -> None:
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
        self.consumer.subscribe(
            [self.input_topic], listener=_Rebalance(self, self._incarnation)
        )
        self._started = True
        log.info("%s started: %d input partitions, group %s", self.name,
                 self.input_partition_count, self.group_id)

    async def _close_clients(self) -> None:
        """Close whatever clients exist, within a bound: a stalled broker must not hold
        a restart (or a stop) up. What a client still had in flight is abandoned: the
        broker aborts the open transaction when the next incarnation fences it."""
        for client in (getattr(self, "consumer", None), getattr(self, "producer", None)):
            if client is None:
                continue
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                    await client.stop()
            except Exception:  # closing a broken client: nothing to save
                log.debug("%s: closing a Kafka client failed", self.name, exc_info=True)
                with contextlib.suppress(Exception):
                    await client._client.close()
        self._started = False
        self._incarnation += 1

    async def stop(self) -> None:
        self._stopping.set()
        async with self._lock:  # the batch in flight commits first
            if self._started:
                await self._release(sorted(self.partitions))
            await self._close_clients()

    async def run(self) -> None:
        """Batches until stopped. A failed batch (the broker down, stalled, fenced after
        its transaction timed out) is not the worker's end: the stage starts over from
        its last commit, in this process, as a restarted worker would."""
        while not self._stopping.is_set():
            try:
                await self._run_batches()
            except Exception as exc:
                if is_fatal(exc) or self._stopping.is_set():
                    raise
                if not isinstance(exc, KafkaError | TimeoutError):  # not the broker: loud
                    log.exception("%s failed unexpectedly; it restarts from its last "
                                  "commit", self.name)
                self.health.failed("processing a batch", exc)
                await self._restart()

    async def _run_batches(self) -> None:
        while not self._stopping.is_set():
            batch = await self.consumer.getmany(
                timeout_ms=self.settings.ingest_poll_timeout_ms, max_records=self.max_batch
            )
            async with self._lock:
                if self._stopping.is_set():
                    break
                await self._transact(batch)

    async def _restart(self) -> None:
        """Back to the last commit: in-memory state may be ahead of Kafka (the failed
        batch changed it), so it goes, and assignment restores it from the changelog;
        the input resumes from the committed offsets."""
        self.restarts += 1
        log.debug("%s restarts from its last commit (restart %d)", self.name, self.restarts)
        async with self._lock:  # no release: the partitions stay ours
            await self._close_clients()
            self.partitions.clear()
        await asyncio.sleep(RETRY_FIRST_SECONDS)  # the next try has its own backoff
        if not self._stopping.is_set():
            await self.start()

    # --- rebalancing ----------------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: list[TopicPartition], incarnation: int) -> None:
        async with self._lock:  # waits for an in-flight batch to commit
            if incarnation != self._incarnation:
                return
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
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await self.producer.begin_transaction()
                await self.on_release(writer, partitions)
                await writer.flush()
                await self.producer.commit_transaction()
            log.info("%s released partitions %s", self.name, partitions)
        except Exception:  # logged, not raised: see the docstring
            log.warning("%s could not publish its release of partitions %s", self.name,
                        partitions, exc_info=True)

    async def on_partitions_assigned(
        self, assigned: list[TopicPartition], incarnation: int
    ) -> None:
        async with self._lock:
            if incarnation != self._incarnation:
                return
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
        """One transaction: outputs, state changelog and input offsets, or nothing. A
        failure is raised (see :meth:`run`); a batch that the broker leaves unanswered
        for ``STALLED_AFTER_SECONDS`` is reported as an outage while it waits."""
        started = time.perf_counter()
        writer = BatchWriter(self.producer)
        offsets: dict[TopicPartition, int] = {}
        events = 0
        began = time.monotonic()
        stalled = asyncio.get_running_loop().call_later(
            STALLED_AFTER_SECONDS, lambda: self.health.failed(
                "committing a batch",
                TimeoutError(f"no answer for {STALLED_AFTER_SECONDS:.0f} s"), began=began,
            ),
        )
        try:
            await self.before_batch(batch)
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
                # In-memory state is now ahead of Kafka; the caller starts over from
                # the committed state rather than guess.
                log.debug("%s transaction failed", self.name, exc_info=True)
                raise
        finally:
            stalled.cancel()
        if offsets or writer.records:  # an empty transaction never reaches the broker
            self.health.succeeded()
        self.committed(events, time.perf_counter() - started)
