"""The ingest stage: the hot path, one batch at a time on plain aiokafka.

For each batch from ``messaging.events``: decode (orjson) and validate every message,
send rejects to the DLQ with their reason, feed the rest to the partition's
:class:`PartitionCore` (conversation state, first replies, per-window counts), then in
ONE Kafka transaction produce the batch's partials (key = segment), the DLQ records,
the changed conversation state (compacted changelog, same partition number as the
input), the partition clocks, watermark marks for every partials partition, and the
input offsets. A crash anywhere aborts the transaction; the restarted stage restores
its state from the changelog and reprocesses the batch, so nothing is lost or doubled.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.structs import TopicPartition

from streams import distinct
from streams.conversations import BatchWindows, Conversation, PartitionCore
from streams.events import decode, validate
from streams.kafka_io import BatchWriter, partition_for
from streams.partials import GLOBAL_SEGMENT, encode, split_by_segment
from streams.pipeline_metrics import PipelineMetrics
from streams.settings import Settings
from streams.windows import window_start

log = logging.getLogger(__name__)

CLOCK_KEY = b"\x00clock"  # the partition clock's record in the state changelog


@dataclass(slots=True)
class _Partition:
    core: PartitionCore
    last_input_wall: float
    sent_mark: tuple[Any, ...] | None = None  # last (window of wm, window of max_ts, idle)


@dataclass(slots=True)
class _BatchOutput:
    writer: BatchWriter
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    processed: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, int] = field(default_factory=dict)
    late: int = 0


class IngestStage(ConsumerRebalanceListener):
    def __init__(self, settings: Settings, metrics: PipelineMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.group_id = f"{settings.app_id}-ingest"
        self.partitions: dict[int, _Partition] = {}
        self.source_count = 0
        self._next_offsets: dict[TopicPartition, int] = {}
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._started = False
        self._options = settings.kafka_client_options()
        self.consumer: AIOKafkaConsumer
        self.producer: AIOKafkaProducer

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        # aiokafka clients bind to the running loop, so they are made here, not in __init__
        settings, options = self.settings, self._options
        self.consumer = AIOKafkaConsumer(
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
            **options,
        )
        self.producer = AIOKafkaProducer(
            transactional_id=f"{settings.app_id}-ingest-{settings.worker_id}",
            transaction_timeout_ms=settings.transaction_timeout_ms,
            linger_ms=5,
            max_batch_size=1024 * 1024,
            max_request_size=8 * 1024 * 1024,
            **options,
        )
        # The producer first: its InitProducerId fences a previous incarnation of this
        # worker and aborts that one's open transaction before we restore any state.
        await self.producer.start()
        await self.consumer.start()
        partitions = self.consumer.partitions_for_topic(self.settings.events_topic)
        if not partitions:
            await self.consumer._client.force_metadata_update()
            partitions = self.consumer.partitions_for_topic(self.settings.events_topic)
        self.source_count = len(partitions or ())
        self.consumer.subscribe([self.settings.events_topic], listener=self)
        self._started = True
        log.info("ingest started: %d input partitions, group %s", self.source_count,
                 self.group_id)

    async def stop(self) -> None:
        self._stopping.set()
        async with self._lock:
            if self._started:
                await self.consumer.stop()
                await self.producer.stop()
                self._started = False

    async def run(self) -> None:
        while not self._stopping.is_set():
            batch = await self.consumer.getmany(
                timeout_ms=self.settings.ingest_poll_timeout_ms,
                max_records=self.settings.ingest_max_batch,
            )
            async with self._lock:
                if self._stopping.is_set():
                    break
                await self._handle(batch)

    # --- rebalancing ----------------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self._lock:  # waits for an in-flight batch to commit
            for tp in revoked:
                self.partitions.pop(tp.partition, None)
                self._next_offsets.pop(tp, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self._lock:
            fresh = [tp.partition for tp in assigned if tp.partition not in self.partitions]
            if fresh:
                restored = await self._restore(fresh)
                now = time.monotonic()
                for partition, core in restored.items():
                    self.partitions[partition] = _Partition(core, now)

    async def _restore(self, partitions: list[int]) -> dict[int, PartitionCore]:
        """Rebuild conversation state and clocks from the compacted changelog."""
        cores = {
            p: PartitionCore(self.settings.window_seconds, self.settings.allowed_lateness_seconds)
            for p in partitions
        }
        reader = AIOKafkaConsumer(
            isolation_level="read_committed", enable_auto_commit=False, **self._options
        )
        await reader.start()
        try:
            tps = [TopicPartition(self.settings.ingest_state_topic, p) for p in partitions]
            reader.assign(tps)
            await reader.seek_to_beginning(*tps)
            ends = await reader.end_offsets(tps)
            remaining = {tp for tp in tps if ends[tp] > 0}
            records = 0
            while remaining:
                batch = await reader.getmany(*remaining, timeout_ms=1000)
                for tp, messages in batch.items():
                    core = cores[tp.partition]
                    for message in messages:
                        records += 1
                        _apply_state_record(core, message.key, message.value)
                for tp in list(remaining):
                    if await reader.position(tp) >= ends[tp]:
                        remaining.discard(tp)
            log.info("restored ingest state of partitions %s from %d records",
                     sorted(partitions), records)
        finally:
            await reader.stop()
        return cores

    # --- one batch --------------------------------------------------------------------
    async def _handle(self, batch: dict[TopicPartition, list[Any]]) -> None:
        started = time.perf_counter()
        out = _BatchOutput(BatchWriter(self.producer))
        events = 0
        await self.producer.begin_transaction()
        try:
            for tp, messages in batch.items():
                partition = self.partitions.get(tp.partition)
                if partition is None or not messages:
                    continue  # revoked between fetch and now: the new owner redoes it
                events += len(messages)
                await self._ingest_partition(tp, partition, messages, out)
            await self._send_marks(out)
            if out.offsets:
                await self.producer.send_offsets_to_transaction(out.offsets, self.group_id)
            await out.writer.flush()
            await self.producer.commit_transaction()
        except BaseException:
            # A failed transaction leaves in-memory state ahead of Kafka: let the
            # worker die and restart from the committed state rather than guess.
            log.exception("ingest transaction failed; stopping the worker")
            raise
        self.metrics.record_batch(
            events, out.processed, out.invalid, out.late, time.perf_counter() - started
        )
        self._record_lag()

    async def _ingest_partition(
        self, tp: TopicPartition, partition: _Partition, messages: list[Any], out: _BatchOutput
    ) -> None:
        settings = self.settings
        core = partition.core
        batch = BatchWindows()
        processed = out.processed
        for message in messages:
            event, rejection = decode(message.value, settings.max_event_bytes)
            if rejection is None:
                rejection = validate(event)
            if rejection is not None:
                out.invalid[rejection.reason] = out.invalid.get(rejection.reason, 0) + 1
                await out.writer.add(
                    settings.dlq_topic, 0, message.key, message.value,
                    [
                        ("dlq.reason", rejection.reason.encode()),
                        ("dlq.detail", rejection.detail.encode()),
                        ("dlq.source", f"{tp.topic}/{tp.partition}/{message.offset}".encode()),
                    ],
                )
                continue
            if core.add(event, batch):
                kind = event["type"]
                processed[kind] = processed.get(kind, 0) + 1
            else:
                out.late += 1
        partition.last_input_wall = time.monotonic()
        last_offset = messages[-1].offset
        out.offsets[tp] = self._next_offsets[tp] = last_offset + 1
        writer = out.writer
        by_segment: dict[str, dict[str, dict[str, int]]] = {}
        for start, counts in batch.counts.items():
            for segment, part in split_by_segment(counts).items():
                by_segment.setdefault(segment, {})[str(start)] = encode(part)
        for segment, segment_windows in by_segment.items():
            key = segment.encode()
            record: dict[str, Any] = {
                "kind": "partial", "segment": segment, "source": tp.partition,
                "offset": last_offset, "windows": segment_windows,
            }
            if segment == GLOBAL_SEGMENT and batch.senders:
                record["senders"] = {
                    str(start): distinct.to_text(distinct.sketch_of(ids))
                    for start, ids in batch.senders.items()
                }
            await writer.add(
                settings.partials_topic, partition_for(key, settings.partials_partitions),
                key, orjson.dumps(record),
            )
        state_topic = settings.ingest_state_topic
        conversations = core.conversations
        for conversation_id in batch.touched:
            await writer.add(
                state_topic, tp.partition, conversation_id.encode(),
                conversations[conversation_id].dumps(),
            )
        await writer.add(
            state_topic, tp.partition, CLOCK_KEY, orjson.dumps({"max_ts": _finite(core.clock.max_ts)})
        )

    async def _send_marks(self, out: _BatchOutput) -> None:
        """Tell every partials partition how far each of our input partitions has got."""
        now = time.monotonic()
        size = self.settings.window_seconds
        for source, partition in self.partitions.items():
            clock = partition.core.clock
            if not clock.idle and now - partition.last_input_wall >= self.settings.idle_timeout_seconds:
                clock.idle = True
            mark_id = (
                _window_index(clock.watermark, size), _window_index(clock.max_ts, size), clock.idle
            )
            if mark_id == partition.sent_mark:
                continue
            partition.sent_mark = mark_id
            value = orjson.dumps({
                "kind": "mark", "source": source, "sources": self.source_count,
                "watermark": _finite(clock.watermark), "max_ts": _finite(clock.max_ts),
                "idle": clock.idle,
            })
            for target in range(self.settings.partials_partitions):
                await out.writer.add(self.settings.partials_topic, target, b"mark", value)

    def _record_lag(self) -> None:
        lag = 0
        for tp, next_offset in self._next_offsets.items():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                lag += max(0, highwater - next_offset)
        self.metrics.consumer_lag.set(lag)


def _apply_state_record(core: PartitionCore, key: bytes, value: bytes | None) -> None:
    if key == CLOCK_KEY:
        if value is not None:
            max_ts = orjson.loads(value)["max_ts"]
            core.clock.max_ts = -math.inf if max_ts is None else max_ts
        return
    conversation_id = key.decode()
    if value is None:
        core.conversations.pop(conversation_id, None)
    else:
        core.conversations[conversation_id] = Conversation.loads(value)


def _window_index(ts: float, size: int) -> int | None:
    return window_start(ts, size) if math.isfinite(ts) else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
