"""The ingest stage: the hot path, one batch at a time on plain aiokafka.

For each batch from ``messaging.events``: decode (orjson) and validate every message,
send rejects to the DLQ with their reason, feed the rest to the partition's
:class:`PartitionCore` (conversation state, first replies, per-window counts, distinct
senders, per-sender activity), then in ONE Kafka transaction (see
:class:`~streams.kafka.stage.TransactionalStage`) produce the batch's partials (key =
segment), the sender activity (to the partition of each sender), the DLQ records, the
batch's state records (its changed conversations, accepted event ids and the partition
clock, a few records per batch: :mod:`streams.ingest.changelog`), watermark marks for
every downstream partition, and the input offsets. A crash anywhere aborts the
transaction; the restarted stage restores its state from the changelog and reprocesses
the batch, so nothing is lost or doubled.

The conversations live on disk (:class:`~streams.store.partition_store.PartitionStore`,
one per partition under ``STATE_DIR``) behind a bounded cache: after each committed
transaction its changelog records are written there too, with the changelog offset
they reach, so a restart on the same disk reads only the changelog past that offset.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka.structs import TopicPartition

from streams.events import Rejection, parse
from streams.ingest.changelog import (
    CLOCK_KEY,
    IDS_PREFIX,
    RecordLives,
    conversation_records,
    conversations_expiry,
    decode_conversations,
    ids_expiry,
    is_conversations,
)
from streams.ingest.conversation_table import Conversation, StoredConversations
from streams.ingest.conversations import BatchWindows, PartitionCore, new_core
from streams.ingest.records import activity_records, mark_record, partial_records
from streams.kafka.io import BatchWriter, fetched_end
from streams.kafka.outage import OutageReport
from streams.kafka.stage import STALLED_AFTER_SECONDS, TransactionalStage
from streams.pipeline_metrics import BatchReport
from streams.settings import Settings
from streams.store.partition_store import PartitionStore, StoreLocked, total_usage
from streams.store.records import RECORD_BYTES
from streams.windows import (
    Idleness,
    PartitionClock,
    finite_or_none,
    or_minus_inf,
    window_start,
)

FETCH_FRESH_SECONDS = 2.0  # a caught-up partition is long-polled every 0.5 s
STORE_LAYOUT = b"ingest-4"  # conversations "c", batches' starts "s"; record lives: index "x", data "\\x00life:"
STORE_COMMIT_RECORDS = 50_000  # a full restore writes the store in slices of this many
STORE_LOCK_WAIT_SECONDS = 120.0


@dataclass(slots=True)
class IngestPartition:
    core: PartitionCore
    idleness: Idleness
    store: PartitionStore
    lives: RecordLives
    since: float = field(default_factory=time.monotonic)  # this worker's since (restored)
    sent_mark: tuple[Any, ...] | None = None  # last (window of wm, window of max_ts, idle)
    restoring: int = 0  # changelog records read back and not yet written to the store
    restored_through: int | None = None  # the offset of the last of them
    resume_at: int | None = None  # the input offset after the last batch its state holds


@dataclass(slots=True)
class _Tally:
    processed: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, int] = field(default_factory=dict)
    late: int = 0


class IngestStage(TransactionalStage[IngestPartition]):
    name = "ingest"

    def __init__(
        self, settings: Settings, report: Callable[[BatchReport | OutageReport], object],
        report_source: str = "", state_owner: str | None = None,
    ) -> None:
        if settings.state_dir is None:
            raise ValueError("the ingest needs STATE_DIR (the worker sets a temporary one)")
        # children of one worker share its directory (a partition is one child's at a time)
        self.state_path = (
            settings.state_dir / settings.app_id / (state_owner or settings.worker_id) / "ingest"
        )
        super().__init__(
            settings, settings.events_topic, settings.ingest_state_topic,
            settings.ingest_max_batch, source=report_source, on_outage=report,
        )
        self.report = report  # after every committed transaction, and outages
        self.report_source = report_source
        self._tally = _Tally()
        self._next_offsets: dict[int, int] = {}
        self._with_input: set[int] = set()  # partitions with input in this batch
        self._mark_targets = (
            (settings.partials_topic, settings.partials_partitions),
            (settings.activity_topic, settings.activity_partitions),
        )

    # --- state ----------------------------------------------------------------------------
    def new_state(self, partition: int) -> IngestPartition:
        store = PartitionStore(self.state_path / str(partition), STORE_LAYOUT)
        core = new_core(self.settings)
        core.conversations = StoredConversations(store, self.settings.state_cache_conversations)
        core.read_record = store.get
        return IngestPartition(
            core, Idleness(self.settings.idle_timeout_seconds), store, RecordLives(store)
        )

    async def open_state(self, partition: int) -> IngestPartition:
        """A sibling ingest process that gave the partition up may still hold its store
        for a moment (it closes it when its restore or batch ends): wait for it."""
        deadline = time.monotonic() + STORE_LOCK_WAIT_SECONDS
        while True:
            try:
                return self.new_state(partition)
            except StoreLocked:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    def restore_from(self, state: IngestPartition, beginning: int, end: int) -> int:
        return state.store.restore_point(self.name, beginning, end)

    def restore_message(self, state: IngestPartition, message: Any) -> None:
        self.restore_record(state, message.key, message.value)
        state.restoring += 1
        state.restored_through = message.offset
        if state.restoring >= STORE_COMMIT_RECORDS:
            state.store.commit(message.offset)
            state.restoring = 0

    def restore_record(self, state: IngestPartition, key: bytes | None, value: bytes | None) -> None:
        """A conversations record's tombstone needs nothing: what it held is past its
        horizon, and :meth:`restored` drops that from the store."""
        core = state.core
        if key is None:
            return
        if is_conversations(key):
            if value is not None:
                changed = decode_conversations(value)
                core.conversations.restore(changed)  # type: ignore[union-attr]
                state.lives.track(key, conversations_expiry(
                    changed, core.conversation_ttl, core.inmail_ttl))
        elif key.startswith(IDS_PREFIX):
            state.store.stage(key, value)
            if value is not None:
                state.lives.track(key, ids_expiry(orjson.loads(value), core.dedup_horizon))
        elif key == CLOCK_KEY:
            state.store.stage(key, value)
        elif value is not None:  # one conversation's record, as earlier versions wrote
            changed = [(key.decode(), Conversation.loads(value))]
            core.conversations.restore(changed)  # type: ignore[union-attr]
            # tombstoned when it expires, as this version's records are
            state.lives.track(key, conversations_expiry(
                changed, core.conversation_ttl, core.inmail_ttl))

    def restored(self, state: IngestPartition) -> None:
        """The store reflects the changelog: the clock, and the fingerprints of the event
        ids its records hold (the ids stay there: ``native/src/lib.rs``), come into memory;
        conversations stay on disk until needed. Then
        what is past its horizon goes, as the live stage dropped it batch by batch: a
        record lives while anything in it does, so it can bring back conversations (and
        older values of them) that the live stage had forgotten."""
        store, core = state.store, state.core
        store.commit(state.restored_through)
        core.conversations.restored()
        raw = store.get(CLOCK_KEY)
        if raw is not None:
            clock = orjson.loads(raw)
            core.clock.max_ts = or_minus_inf(clock["max_ts"])
            state.resume_at = clock.get("resume_at")  # earlier versions: not written
        core.event_ids.restore(
            list(store.items(IDS_PREFIX)), core.clock.max_ts - core.dedup_horizon
        )
        core.expire()
        store.commit(None)

    def resume_at(self, state: IngestPartition) -> int | None:
        return state.resume_at

    def checkpoint(self, writer: BatchWriter) -> None:
        for partition, state in self.partitions.items():
            state.store.commit(writer.last_offset(self.state_topic, partition))

    def close_state(self, state: IngestPartition) -> None:
        state.store.close()

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
        self._with_input.add(tp.partition)
        last_offset = messages[-1].offset
        self._next_offsets[tp.partition] = last_offset + 1
        await self._send_partials(tp.partition, last_offset, batch, writer)
        await self._send_activity(tp.partition, last_offset, batch, writer)
        state_topic, store, lives = settings.ingest_state_topic, state.store, state.lives
        now = core.clock.max_ts
        core.conversations.stage(batch.touched)
        for key, value, expires in conversation_records(
            batch.touched, last_offset, core.conversation_ttl, core.inmail_ttl, now,
        ):
            await writer.add(state_topic, tp.partition, key, value)
            lives.track(key, expires)
        for key, value, newest in core.event_ids.finish_batch(
            IDS_PREFIX, last_offset, now, RECORD_BYTES
        ):
            await writer.add(state_topic, tp.partition, key, value)
            store.stage(key, value)  # read back on restore, and to confirm duplicates
            lives.track(key, newest + core.dedup_horizon)
        await self._expire(tp.partition, state, writer)
        value = orjson.dumps(
            {"max_ts": finite_or_none(core.clock.max_ts), "resume_at": last_offset + 1}
        )
        await writer.add(state_topic, tp.partition, CLOCK_KEY, value)
        store.stage(CLOCK_KEY, value)

    async def _expire(self, partition: int, state: IngestPartition, writer: BatchWriter) -> None:
        """Forget what is past its horizon, and tombstone the changelog records that
        hold nothing else (which keeps the compacted changelog bounded)."""
        state_topic = self.settings.ingest_state_topic
        state.core.expire()
        for key in list(state.lives.expired(state.core.clock.max_ts)):
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
    async def after_batch(self, writer: BatchWriter) -> None:
        """Tell every downstream partition how far each of our input partitions has got."""
        self._judge_idleness()
        size = self.settings.window_seconds
        for source, partition in self.partitions.items():
            clock = partition.core.clock
            mark_id = (
                _window_index(clock.watermark, size), _window_index(clock.max_ts, size), clock.idle
            )
            if mark_id == partition.sent_mark:
                continue
            partition.sent_mark = mark_id
            await self._send_mark(writer, source, clock)

    def _judge_idleness(self) -> None:
        """Each partition without input in this batch, against what its last fetch
        response said: caught up with the broker's end then, or not, or no fresh answer
        (``FETCH_FRESH_SECONDS``), which confirms nothing. A stale highwater or a failed
        fetch never counts as caught up: while the broker is down, stalled or
        unreachable, the partition holds the watermark where it is."""
        now, wall = time.monotonic(), time.time()
        answered = bool(self._with_input)
        silent = 0.0  # the longest a partition with nothing buffered waits for an answer
        for source, state in self.partitions.items():
            if source in self._with_input:
                continue
            fetched = fetched_end(self.consumer, TopicPartition(self.input_topic, source))
            age = now - state.since if fetched is None else wall - fetched.at
            if fetched is not None and age <= FETCH_FRESH_SECONDS:
                state.idleness.confirmed(now - age, fetched.position >= fetched.end)
                answered = True
            else:
                state.idleness.unconfirmed(now)
                silent = max(silent, min(age, now - state.since))
            state.core.clock.idle = state.idleness.idle(now)
        self._with_input.clear()
        if silent >= STALLED_AFTER_SECONDS and not answered:
            self.health.failed(
                "reading its partitions",
                TimeoutError(f"no fetch answer for {silent:.0f} s"), began=now - silent,
            )
        elif answered:
            self.health.succeeded("reading its partitions")

    async def on_assign(self, writer: BatchWriter, partitions: list[int]) -> None:
        """Hold the watermark at fresh partitions until their state is restored and they
        report: a previous owner's last mark may say "idle", and it would stand while
        this worker restores (after a crash, a restart in process, a rebalance), letting
        the watermark run past records that wait for us. A hold (no event time yet, not
        idle) cannot move the watermark back: it only keeps it where it is."""
        for source in partitions:
            await self._send_mark(writer, source, PartitionClock(self.settings.allowed_lateness_seconds))

    def aborted(self) -> None:
        self._tally = _Tally()  # the failed batch is counted when it is done again
        self._next_offsets.clear()
        self._with_input.clear()

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
        owned = self.partitions.values()
        self.report(BatchReport(
            self.report_source, events, seconds, lag, len(self.partitions),
            tally.processed, tally.invalid, tally.late,
            total_usage(state.store for state in owned),
            sum(len(state.core.event_ids) for state in owned),
            sum(state.core.event_ids.memory_bytes() for state in owned),
        ))


def _window_index(ts: float, size: int) -> int | None:
    return window_start(ts, size) if math.isfinite(ts) else None

