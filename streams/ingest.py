"""The ingest stage: the hot path, one batch at a time on plain aiokafka.

For each batch from ``messaging.events``: decode (orjson) and validate every message,
send rejects to the DLQ with their reason, feed the rest to the partition's
:class:`PartitionCore` (conversation state, first replies, per-window counts, distinct
senders, per-sender activity), then in ONE Kafka transaction (see
:class:`~streams.stage.TransactionalStage`) produce the batch's partials (key =
segment), the sender activity (to the partition of each sender), the DLQ records, the
changed conversation state (compacted changelog, same partition number as the input),
the partition clocks, watermark marks for every downstream partition, and the input
offsets. A crash anywhere aborts the transaction; the restarted stage restores its
state from the changelog and reprocesses the batch, so nothing is lost or doubled.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka.structs import TopicPartition

from streams import distinct
from streams.conversations import BatchWindows, Conversation, PartitionCore
from streams.events import decode, validate
from streams.kafka_io import BatchWriter, partition_for
from streams.partials import GLOBAL_SEGMENT, encode, split_by_segment
from streams.pipeline_metrics import PipelineMetrics
from streams.settings import Settings
from streams.stage import TransactionalStage
from streams.windows import window_start

log = logging.getLogger(__name__)

CLOCK_KEY = b"\x00clock"  # the partition clock's record in the state changelog


@dataclass(slots=True)
class IngestPartition:
    core: PartitionCore
    last_input_wall: float = field(default_factory=time.monotonic)
    sent_mark: tuple[Any, ...] | None = None  # last (window of wm, window of max_ts, idle)


@dataclass(slots=True)
class _Tally:
    processed: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, int] = field(default_factory=dict)
    late: int = 0


class IngestStage(TransactionalStage[IngestPartition]):
    name = "ingest"

    def __init__(self, settings: Settings, metrics: PipelineMetrics) -> None:
        super().__init__(
            settings, settings.events_topic, settings.ingest_state_topic,
            settings.ingest_max_batch,
        )
        self.metrics = metrics
        self._tally = _Tally()
        self._next_offsets: dict[int, int] = {}
        self._mark_targets = (
            (settings.partials_topic, settings.partials_partitions),
            (settings.activity_topic, settings.activity_partitions),
        )

    # --- state ----------------------------------------------------------------------------
    def new_state(self, partition: int) -> IngestPartition:
        core = PartitionCore(self.settings.window_seconds, self.settings.allowed_lateness_seconds)
        return IngestPartition(core)

    def restore_record(self, state: IngestPartition, key: bytes | None, value: bytes | None) -> None:
        core = state.core
        if key == CLOCK_KEY:
            if value is not None:
                max_ts = orjson.loads(value)["max_ts"]
                core.clock.max_ts = -math.inf if max_ts is None else max_ts
            return
        assert key is not None
        conversation_id = key.decode()
        if value is None:
            core.conversations.pop(conversation_id, None)
        else:
            core.conversations[conversation_id] = Conversation.loads(value)

    # --- one partition's batch --------------------------------------------------------
    async def process(
        self, tp: TopicPartition, state: IngestPartition, messages: list[Any], writer: BatchWriter
    ) -> None:
        settings, tally = self.settings, self._tally
        core = state.core
        batch = BatchWindows()
        processed = tally.processed
        for message in messages:
            event, rejection = decode(message.value, settings.max_event_bytes)
            if rejection is None:
                rejection = validate(event)
            if rejection is not None:
                tally.invalid[rejection.reason] = tally.invalid.get(rejection.reason, 0) + 1
                await writer.add(
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
                tally.late += 1
        state.last_input_wall = time.monotonic()
        last_offset = messages[-1].offset
        self._next_offsets[tp.partition] = last_offset + 1
        await self._send_partials(tp.partition, last_offset, batch, writer)
        await self._send_activity(tp.partition, last_offset, batch, writer)
        conversations = core.conversations
        for conversation_id in batch.touched:
            await writer.add(
                settings.ingest_state_topic, tp.partition, conversation_id.encode(),
                conversations[conversation_id].dumps(),
            )
        await writer.add(
            settings.ingest_state_topic, tp.partition, CLOCK_KEY,
            orjson.dumps({"max_ts": _finite(core.clock.max_ts)}),
        )

    async def _send_partials(
        self, source: int, last_offset: int, batch: BatchWindows, writer: BatchWriter
    ) -> None:
        settings = self.settings
        by_segment: dict[str, dict[str, dict[str, int]]] = {}
        for start, counts in batch.counts.items():
            for segment, part in split_by_segment(counts).items():
                by_segment.setdefault(segment, {})[str(start)] = encode(part)
        for segment, segment_windows in by_segment.items():
            key = segment.encode()
            record: dict[str, Any] = {
                "kind": "partial", "segment": segment, "source": source,
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

    async def _send_activity(
        self, source: int, last_offset: int, batch: BatchWindows, writer: BatchWriter
    ) -> None:
        """Per-sender activity, one record per risk partition: repartitioned by sender."""
        partitions = self.settings.activity_partitions
        targets: dict[int, dict[str, dict[str, list[int]]]] = {}
        for start, senders in batch.activity.items():
            window = str(start)
            for sender, counts in senders.items():
                target = targets.setdefault(partition_for(sender.encode(), partitions), {})
                target.setdefault(window, {})[sender] = counts
        for target, windows in targets.items():
            record = {"kind": "activity", "source": source, "offset": last_offset,
                      "windows": windows}
            await writer.add(self.settings.activity_topic, target, None, orjson.dumps(record))

    # --- every transaction ----------------------------------------------------------------
    async def after_batch(self, writer: BatchWriter) -> None:
        """Tell every downstream partition how far each of our input partitions has got."""
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
                "kind": "mark", "source": source, "sources": self.input_partition_count,
                "watermark": _finite(clock.watermark), "max_ts": _finite(clock.max_ts),
                "idle": clock.idle,
            })
            for topic, count in self._mark_targets:
                for target in range(count):
                    await writer.add(topic, target, b"mark", value)

    def committed(self, events: int, seconds: float) -> None:
        tally, self._tally = self._tally, _Tally()
        self.metrics.record_batch(events, tally.processed, tally.invalid, tally.late, seconds)
        lag = 0
        for partition, next_offset in self._next_offsets.items():
            if partition not in self.partitions:
                continue
            highwater = self.consumer.highwater(TopicPartition(self.input_topic, partition))
            if highwater is not None:
                lag += max(0, highwater - next_offset)
        self.metrics.consumer_lag.set(lag)


def _window_index(ts: float, size: int) -> int | None:
    return window_start(ts, size) if math.isfinite(ts) else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
