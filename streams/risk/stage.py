"""The risk stage: per-sender activity, batch-at-a-time, exactly once by transactions.

It reads ``messaging.sender-activity`` (the ingest writes each batch's per-sender
counts to the partition of each sender, plus watermark marks), keeps one
:class:`~streams.risk.rules.RiskState` per partition and, in the same transaction as its
input offsets, publishes every flag to ``messaging.risk.flagged-senders`` and what the
batch changed in the partition's state to a compacted changelog
(:mod:`streams.risk.changelog`): a record per recruiter whose InMail history changed
(a tombstone if it was forgotten), what it added to the open windows, and a small
header.

Recruiters' 14-day InMail history (it grows with the senders) lives on disk
(:class:`~streams.store.partition_store.PartitionStore`, one per partition under
``STATE_DIR/<APP_ID>/<WORKER_ID>/risk/<partition>``) and is read only when a window
closes, for the senders active in it; the open windows stay in memory (bounded by the
windows still open). After each committed transaction its changelog records are written
to the store with the changelog offset they reach, so a restart on the same disk reads
only the changelog's tail; a store that is missing, older than the changelog, of another
layout or corrupt is rebuilt from the whole changelog.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka.structs import TopicPartition

from streams.kafka.io import BatchWriter
from streams.kafka.outage import OutageReport
from streams.kafka.stage import TransactionalStage
from streams.risk.changelog import (
    HEADER_KEY,
    HISTORY_PREFIX,
    SNAPSHOT_KEY,
    WINDOW_PREFIX,
    decode_history,
    decode_window,
    history_key,
    history_sender,
    history_value,
    window_of,
    window_records,
)
from streams.risk.inmail import InmailHistory, StoredInmail
from streams.risk.rules import Increments, RiskRules, RiskState, add_counts, add_responses
from streams.settings import Settings
from streams.store.partition_store import PartitionStore

# histories "h", due index "n", window records and header as written (risk-1: also the
# lives of the chunked history records, which went)
STORE_LAYOUT = b"risk-2"
# a full restore writes the store in slices of about this many staged writes (a
# recruiter's history or an index entry: ~200 bytes each, ~10 MiB a slice), counted in
# the store rather than in records, which hold from one to thousands of values each
STORE_COMMIT_ENTRIES = 50_000
# The worker's process already holds the ingest stores' RocksDB budget (8 MiB memtables
# and block cache per events partition). The risk stores see a few writes per window
# close and reads of the senders active in a window: small buffers are plenty, and keep
# the activity partitions from adding the ingest's memory again.
STORE_BUFFER_BYTES = 2 << 20


@dataclass(slots=True)
class RiskPartition:
    state: RiskState
    store: PartitionStore
    table: StoredInmail
    window_keys: dict[int, list[bytes]] = field(default_factory=dict)  # records of open windows
    # read back from an earlier version's snapshot record: its open windows (the
    # snapshot's own: window records are not added to them) until the first batch writes
    # the whole state as this version's records and tombstones the snapshot
    upgrading: tuple[dict[int, Any], dict[int, Any]] | None = None
    # the latest snapshot record read back, applied once the restore is over (an
    # uncompacted changelog holds one per batch of the earlier version)
    snapshot: bytes | None = None
    restored_through: int | None = None  # the offset of the last of them
    resume_at: int | None = None  # the input offset after the last batch its state holds


class RiskStage(TransactionalStage[RiskPartition]):
    name = "risk"

    def __init__(
        self, settings: Settings, on_outage: Callable[[OutageReport], object] | None = None
    ) -> None:
        if settings.state_dir is None:
            raise ValueError("the risk stage needs STATE_DIR (the worker sets a temporary one)")
        self.state_path = settings.state_dir / settings.app_id / settings.worker_id / "risk"
        super().__init__(
            settings, settings.activity_topic, settings.risk_state_topic, max_batch=500,
            on_outage=on_outage,
        )
        self.rules = RiskRules.from_settings(settings)
        self.flags_published = 0

    # --- state ----------------------------------------------------------------------------
    def new_state(self, partition: int) -> RiskPartition:
        store = PartitionStore(
            self.state_path / str(partition), STORE_LAYOUT,
            write_buffer_bytes=STORE_BUFFER_BYTES, block_cache_bytes=STORE_BUFFER_BYTES,
        )
        table = StoredInmail(store)
        state = RiskState(partition, self.settings.window_seconds, self.rules,
                          history=InmailHistory(table, self.rules.inmail_bucket))
        return RiskPartition(state, store, table)

    def restore_from(self, part: RiskPartition, beginning: int, end: int) -> int:
        return part.store.restore_point(self.name, beginning, end)

    def restore_message(self, part: RiskPartition, message: Any) -> None:
        self.restore_record(part, message.key, message.value)
        part.restored_through = message.offset
        if part.store.staged >= STORE_COMMIT_ENTRIES:
            self._commit_restored(part, message.offset)

    def _commit_restored(self, part: RiskPartition, offset: int | None) -> None:
        # Not checkpointed past a snapshot before the first batch has written it as this
        # version's records: a restart must read the snapshot again.
        upgrading = part.upgrading is not None or part.snapshot is not None
        part.store.commit(None if upgrading else offset)
        part.table.committed()

    def restore_record(self, part: RiskPartition, key: bytes | None, value: bytes | None) -> None:
        """A recruiter's record: its latest value wins, a tombstone forgets it."""
        if key is None:
            return
        state, store = part.state, part.store
        if key.startswith(HISTORY_PREFIX):
            sender = history_sender(key)
            if value is None:
                state.history.forget(sender)
            else:
                state.history.restore(sender, decode_history(value))
        elif key.startswith(WINDOW_PREFIX) or key == HEADER_KEY:
            store.stage(key, value)  # into memory by restored()
        elif key == SNAPSHOT_KEY:
            # the latest only, applied by restored(); a tombstone: the first batch after
            # it wrote all it held, it is over
            part.snapshot = value

    def restored(self, part: RiskPartition) -> None:
        """The store reflects the changelog: the header and the open windows come into
        memory, the histories stay on disk (an earlier version's snapshot: applied now,
        the latest only). Then any recruiter past the horizon goes (none: the live stage
        tombstoned each it forgot in the batch that moved the horizon), and would be
        tombstoned by the first batch."""
        store, state = part.store, part.state
        self._commit_restored(part, part.restored_through)
        snapshot, part.snapshot = part.snapshot, None
        if snapshot is not None:
            state.restore(snapshot)
            store.stage(HEADER_KEY, orjson.dumps(state.header()))
            part.upgrading = (state.windows, state.responses)
        raw = store.get(HEADER_KEY)
        if raw is not None:
            header = orjson.loads(raw)
            state.restore_header(header)
            part.resume_at = header.get("resume_at")  # earlier versions: not written
        state.windows, state.responses, part.window_keys = {}, {}, {}
        if part.upgrading is not None:
            state.windows, state.responses = part.upgrading
        else:
            for key, value in store.items(WINDOW_PREFIX):
                start = window_of(key)
                if start + state.window_size <= state.watermark.value:
                    # closed: its tombstone was compacted away before this store read it
                    # (a store older than the broker's delete.retention.ms)
                    store.stage(key, None)
                    continue
                part.window_keys.setdefault(start, []).append(key)
                added = decode_window(value)
                if "activity" in added:
                    window = state.windows.setdefault(start, {})
                    for sender, counts in added["activity"].items():
                        add_counts(window, sender, counts)
                if "responses" in added:
                    answered = state.responses.setdefault(start, {})
                    for sender, buckets in added["responses"].items():
                        add_responses(answered, sender, buckets)
        self._track(part)  # before the expiry: what it forgets is tombstoned
        oldest = state.inmail_oldest
        if oldest is not None:
            state.history.expire(oldest)
        self._commit_restored(part, None)

    def _track(self, part: RiskPartition) -> None:
        """From now on, the state keeps what each batch changes, for its records."""
        part.state.increments = Increments()
        part.state.history.changed = set()

    def _untrack(self, part: RiskPartition) -> tuple[Increments, set[str]]:
        """What the state kept since :meth:`_track`; it starts over."""
        increments, changed = part.state.increments, part.state.history.changed
        assert increments is not None and changed is not None  # restored() set them
        self._track(part)
        return increments, changed

    def resume_at(self, part: RiskPartition) -> int | None:
        return part.resume_at

    def checkpoint(self, writer: BatchWriter) -> None:
        for partition, part in self.partitions.items():
            part.store.commit(writer.last_offset(self.state_topic, partition))
            part.table.committed()

    def close_state(self, part: RiskPartition) -> None:
        part.store.close()

    # --- one partition's batch --------------------------------------------------------
    async def process(
        self, tp: TopicPartition, part: RiskPartition, messages: list[Any], writer: BatchWriter
    ) -> None:
        topic = self.settings.flagged_topic
        for message in messages:
            for flag in part.state.apply(orjson.loads(message.value)):
                await writer.add(topic, 0, flag.sender_id.encode(), orjson.dumps(flag.record()))
                self.flags_published += 1
        await self._write_changes(tp.partition, part, messages[-1].offset, writer)

    async def _write_changes(
        self, partition: int, part: RiskPartition, last_offset: int, writer: BatchWriter
    ) -> None:
        """The batch's changelog records, also staged in the store (committed with the
        transaction's offset by :meth:`checkpoint`)."""
        state, store, topic = part.state, part.store, self.state_topic
        increments, changed = self._untrack(part)
        upgrading = part.upgrading is not None
        if upgrading:  # everything, as this version writes it
            changed |= {sender for sender, _ in state.history.items()}
            increments.windows = dict(state.windows)
            increments.responses = dict(state.responses)
        for sender in sorted(changed):  # a value each (None: forgotten, a tombstone)
            value = state.history.get(sender)
            await writer.add(topic, partition, history_key(sender),
                             None if value is None else history_value(value))
        for start in increments.closed:
            for key in part.window_keys.pop(start, ()):
                await writer.add(topic, partition, key, None)
                store.stage(key, None)
        for start in sorted({*increments.windows, *increments.responses}):
            for key, value in window_records(
                start, increments.windows.get(start), increments.responses.get(start),
                last_offset,
            ):
                await writer.add(topic, partition, key, value)
                store.stage(key, value)
                part.window_keys.setdefault(start, []).append(key)
        header = orjson.dumps({**state.header(), "resume_at": last_offset + 1})
        await writer.add(topic, partition, HEADER_KEY, header)
        store.stage(HEADER_KEY, header)
        if upgrading:
            await writer.add(topic, partition, SNAPSHOT_KEY, None)
            part.upgrading = None
