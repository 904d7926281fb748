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

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka.errors import IllegalStateError, KafkaError
from aiokafka.structs import TopicPartition

from streams.batch_records import activity_records, mark_record, partial_records
from streams.conversations import BatchWindows, Conversation, PartitionCore, new_core
from streams.events import Rejection, parse
from streams.kafka_io import BatchWriter
from streams.outage import OutageReport
from streams.pipeline_metrics import BatchReport
from streams.settings import Settings
from streams.stage import TransactionalStage
from streams.windows import (
    Idleness,
    PartitionClock,
    finite_or_none,
    or_minus_inf,
    window_start,
)

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT_SECONDS = 5.0  # for the broker to say where a partition ends
CLOCK_KEY = b"\x00clock"  # the partition clock's record in the state changelog
IDS_PREFIX = b"\x00ids:"  # one record per batch: the event ids it accepted, with their ts


@dataclass(slots=True)
class IngestPartition:
    core: PartitionCore
    idleness: Idleness
    id_records: dict[bytes, float] = field(default_factory=dict)  # key -> newest ts in it
    sent_mark: tuple[Any, ...] | None = None  # last (window of wm, window of max_ts, idle)


@dataclass(slots=True)
class _Tally:
    processed: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, int] = field(default_factory=dict)
    late: int = 0


class IngestStage(TransactionalStage[IngestPartition]):
    name = "ingest"

    def __init__(
        self, settings: Settings, report: Callable[[BatchReport | OutageReport], object],
        report_source: str = "",
    ) -> None:
        super().__init__(
            settings, settings.events_topic, settings.ingest_state_topic,
            settings.ingest_max_batch, source=report_source, on_outage=report,
        )
        self.report = report  # after every committed transaction, and outages
        self.report_source = report_source
        self._tally = _Tally()
        self._next_offsets: dict[int, int] = {}
        self._mark_targets = (
            (settings.partials_topic, settings.partials_partitions),
            (settings.activity_topic, settings.activity_partitions),
        )

    # --- state ----------------------------------------------------------------------------
    def new_state(self, partition: int) -> IngestPartition:
        return IngestPartition(new_core(self.settings), Idleness(self.settings.idle_timeout_seconds))

    def restore_record(self, state: IngestPartition, key: bytes | None, value: bytes | None) -> None:
        core = state.core
        if key == CLOCK_KEY:
            if value is not None:
                core.clock.max_ts = or_minus_inf(orjson.loads(value)["max_ts"])
            return
        assert key is not None
        if key.startswith(IDS_PREFIX):
            if value is None:
                state.id_records.pop(key, None)
            else:
                ids = orjson.loads(value)
                core.event_ids.update(ids)
                state.id_records[key] = max(ts for _, ts in ids)
            return
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
        max_bytes = settings.max_event_bytes
        admit, add = core.admit, core.add
        for index, message in enumerate(messages):
            if index & 2047 == 2047:
                await asyncio.sleep(0)  # let the aggregate agent and /metrics have a turn
            event, rejection = parse(message.value, max_bytes)
            if event is not None:
                reason = admit(event)
                if reason is None:
                    if add(event, batch):
                        kind = event.kind
                        processed[kind] = processed.get(kind, 0) + 1
                    else:
                        tally.late += 1
                    continue
                rejection = Rejection(reason, event.event_id[:64])
            assert rejection is not None
            tally.invalid[rejection.reason] = tally.invalid.get(rejection.reason, 0) + 1
            await writer.add(
                settings.dlq_topic, 0, message.key, message.value,
                [
                    ("dlq.reason", rejection.reason.encode()),
                    ("dlq.detail", rejection.detail.encode()),
                    ("dlq.source", f"{tp.topic}/{tp.partition}/{message.offset}".encode()),
                ],
            )
        state.idleness.input()
        last_offset = messages[-1].offset
        self._next_offsets[tp.partition] = last_offset + 1
        await self._send_partials(tp.partition, last_offset, batch, writer)
        await self._send_activity(tp.partition, last_offset, batch, writer)
        state_topic = settings.ingest_state_topic
        conversations = core.conversations
        for conversation_id in batch.touched:
            await writer.add(
                state_topic, tp.partition, conversation_id.encode(),
                conversations[conversation_id].dumps(),
            )
        if batch.event_ids:
            key = IDS_PREFIX + str(last_offset).encode()
            await writer.add(state_topic, tp.partition, key, orjson.dumps(batch.event_ids))
            state.id_records[key] = max(ts for _, ts in batch.event_ids)
        await self._expire(tp.partition, state, writer)
        await writer.add(
            settings.ingest_state_topic, tp.partition, CLOCK_KEY,
            orjson.dumps({"max_ts": finite_or_none(core.clock.max_ts)}),
        )

    async def _expire(self, partition: int, state: IngestPartition, writer: BatchWriter) -> None:
        """Forget what is past its horizon, and tombstone it in the compacted changelog."""
        state_topic = self.settings.ingest_state_topic
        dropped, _ = state.core.expire()
        for conversation_id in dropped:
            await writer.add(state_topic, partition, conversation_id.encode(), None)
        oldest = state.core.clock.max_ts - self.settings.dedup_horizon_seconds
        stale = []
        for key, newest in state.id_records.items():
            if newest >= oldest:
                break
            stale.append(key)
        for key in stale:
            del state.id_records[key]
            await writer.add(state_topic, partition, key, None)

    async def _send_partials(
        self, source: int, last_offset: int, batch: BatchWindows, writer: BatchWriter
    ) -> None:
        settings = self.settings
        for partition, key, record in partial_records(
            source, last_offset, batch, settings.partials_partitions
        ):
            await writer.add(settings.partials_topic, partition, key, orjson.dumps(record))

    async def _send_activity(
        self, source: int, last_offset: int, batch: BatchWindows, writer: BatchWriter
    ) -> None:
        settings = self.settings
        for partition, record in activity_records(
            source, last_offset, batch, settings.activity_partitions
        ):
            await writer.add(settings.activity_topic, partition, None, orjson.dumps(record))

    # --- every transaction ----------------------------------------------------------------
    async def before_batch(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """Ask the broker whether the quiet partitions have anything left to read."""
        now = time.monotonic()
        quiet = {
            source: state for source, state in self.partitions.items()
            if not batch.get(TopicPartition(self.input_topic, source))
            and state.idleness.check_due(now, state.core.clock.idle)
        }
        if quiet:
            await self._confirm_caught_up(quiet)

    async def _confirm_caught_up(self, quiet: dict[int, IngestPartition]) -> None:
        """Each partition's position against a fresh end offset (read_committed: the last
        stable offset). A stale high watermark only proves records are waiting; it
        never proves there are none, because the broker may have been unreachable
        since. An error or no answer within the bound confirms nothing."""
        consumer = self.consumer
        tps = {source: TopicPartition(self.input_topic, source) for source in quiet}
        try:
            async with asyncio.timeout(CONFIRM_TIMEOUT_SECONDS):
                positions = {s: await consumer.position(tp) for s, tp in tps.items()}
                behind = {
                    s for s, tp in tps.items()
                    if (consumer.highwater(tp) or 0) > positions[s]
                }
                asked = [tp for s, tp in tps.items() if s not in behind]
                ends = await consumer.end_offsets(asked) if asked else {}
        except (KafkaError, TimeoutError, IllegalStateError) as exc:
            now = time.monotonic()
            for state in quiet.values():
                state.idleness.unconfirmed(now)
            self.health.failed("confirming its partitions are caught up", exc)
            return
        now = time.monotonic()
        for source, state in quiet.items():
            tp = tps[source]
            caught_up = source not in behind and positions[source] >= ends[tp]
            state.idleness.confirmed(now, caught_up)
        self.health.succeeded()

    async def after_batch(self, writer: BatchWriter) -> None:
        """Tell every downstream partition how far each of our input partitions has got."""
        now = time.monotonic()
        size = self.settings.window_seconds
        for source, partition in self.partitions.items():
            clock = partition.core.clock
            clock.idle = partition.idleness.idle(now)
            mark_id = (
                _window_index(clock.watermark, size), _window_index(clock.max_ts, size), clock.idle
            )
            if mark_id == partition.sent_mark:
                continue
            partition.sent_mark = mark_id
            await self._send_mark(writer, source, clock)

    async def on_release(self, writer: BatchWriter, partitions: list[int]) -> None:
        """Withdraw our idle claims. An idle mark says "caught up, nothing coming"; once
        we stop reading a partition that is no longer ours to say, and a stale claim
        would let the watermark run past records that wait for the partition's next
        owner (they would all be late). So the partitions go back to holding the
        watermark where they are, until the next owner reports."""
        for source in partitions:
            clock = self.partitions[source].core.clock
            if not clock.idle:
                continue
            held = PartitionClock(clock.lateness, clock.max_ts, idle=False)
            await self._send_mark(writer, source, held)

    async def _send_mark(self, writer: BatchWriter, source: int, clock: PartitionClock) -> None:
        """To every downstream partition: they all merge every input partition's marks."""
        value = orjson.dumps(mark_record(source, self.input_partition_count, clock))
        for topic, count in self._mark_targets:
            for target in range(count):
                await writer.add(topic, target, b"mark", value)

    def committed(self, events: int, seconds: float) -> None:
        tally, self._tally = self._tally, _Tally()
        lag = 0
        for partition, next_offset in self._next_offsets.items():
            if partition not in self.partitions:
                continue
            highwater = self.consumer.highwater(TopicPartition(self.input_topic, partition))
            if highwater is not None:
                lag += max(0, highwater - next_offset)
        self.report(BatchReport(
            self.report_source, events, seconds, lag, len(self.partitions),
            tally.processed, tally.invalid, tally.late,
        ))


def _window_index(ts: float, size: int) -> int | None:
    return window_start(ts, size) if math.isfinite(ts) else None

