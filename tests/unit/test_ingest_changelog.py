"""The ingest's changelog: a few records per batch, tombstoned only once nothing in them
is remembered any more, so that a rebuild from the compacted changelog gives back every
conversation the live table remembers."""

from __future__ import annotations

import asyncio
import itertools
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import orjson
from aiokafka.structs import TopicPartition
from messaging_native import EventIds

from streams.ingest.changelog import (
    CONVERSATIONS_PREFIX,
    IDS_PREFIX,
    INMAIL_PREFIX,
    RecordLives,
    conversation_records,
    conversations_expiry,
    decode_conversations,
)
from streams.ingest.conversation_table import Conversation, StoredConversations, Touched
from streams.ingest.conversations import BatchWindows, PartitionCore
from streams.store.partition_store import PartitionStore
from streams.store.records import RECORD_BYTES
from tests.unit.test_partition_store import _events


def _conversation(start: float, channel: str = "connection") -> Conversation:
    return Conversation(start, "a", "b", channel, "recruiter" if channel == "inmail" else "member")


def _staged(changed: list[tuple[str, Conversation]]) -> dict[str, Touched]:
    """As a batch keeps the conversations it changed."""
    batch = BatchWindows()
    for conversation_id, conversation in changed:
        batch.touch(conversation_id, conversation)
    return batch.touched


def test_a_batch_writes_one_record_per_lifetime_keyed_by_its_offset() -> None:
    changed = [("c-1", _conversation(100.0)), ("c-2", _conversation(300.0, "inmail")),
               ("c-3", _conversation(200.0))]
    records = conversation_records(_staged(changed), 41, ttl=1000.0, inmail_ttl=5000.0, now=300.0)
    assert [(key, expires) for key, _, expires in records] == [
        (CONVERSATIONS_PREFIX + b"41:0", 1200.0), (INMAIL_PREFIX + b"41:0", 5300.0),
    ]
    assert decode_conversations(records[0][1]) == [changed[0], changed[2]]
    assert decode_conversations(records[1][1]) == [changed[1]]
    _, value, expires = records[1]
    assert conversations_expiry(decode_conversations(value), 1000.0, 5000.0) == expires


def test_a_group_already_past_its_ttl_is_not_written() -> None:
    changed = [("old", _conversation(100.0)), ("inmail", _conversation(100.0, "inmail"))]
    records = conversation_records(_staged(changed), 7, ttl=1000.0, inmail_ttl=5000.0, now=1100.5)
    assert [key for key, _, _ in records] == [INMAIL_PREFIX + b"7:0"]


def test_a_large_batch_is_split_into_records_below_the_brokers_message_limit() -> None:
    """Ids are any text: long ones, and ones JSON escapes, still give records under the
    broker's default max.message.bytes (1 MiB), and together the records hold it all."""
    odd = "\x01" * 3000  # six bytes each in JSON
    changed = [(f"c-{i}-{odd if i % 7 == 0 else ''}", _conversation(float(i)))
               for i in range(20_000)]
    records = conversation_records(_staged(changed), 9, ttl=1e9, inmail_ttl=1e9, now=0.0)
    assert len(records) > 1
    assert max(len(value) for _, value, _ in records) < 1 << 20
    assert [item for _, value, _ in records for item in decode_conversations(value)] == changed
    assert len({key for key, _, _ in records}) == len(records)
    accepted = [(f"e-{i}" + odd * (i % 50 == 0), 1_000.0 + i) for i in range(50_000)]
    event_ids = EventIds(3600.0)
    for event_id, ts in accepted:
        event_ids.admit(event_id, ts, -math.inf)
    ids = event_ids.finish_batch(IDS_PREFIX, 9, 0.0, RECORD_BYTES)
    assert len(ids) > 1 and max(len(value) for _, value, _ in ids) < 1 << 20
    assert [newest for _, _, newest in ids] == sorted(newest for _, _, newest in ids)
    assert [tuple(item) for _, value, _ in ids for item in orjson.loads(value)] == accepted


def test_record_lives_yield_each_expired_record_once_in_expiry_order(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0")
    lives = RecordLives(store)
    early, mid, late = (IDS_PREFIX + name for name in (b"early", b"mid", b"late"))
    for key, expires in ((late, 900.0), (early, 100.0), (mid, 500.0)):
        store.stage(key, b"[]")  # a batch's ids are kept in the store too
        lives.track(key, expires)
    store.commit(1)
    assert list(lives.expired(600.0)) == [early, mid]
    assert store.get(early) is None and store.get(late) == b"[]"
    store.commit(2)
    assert list(lives.expired(600.0)) == []
    assert list(RecordLives(store).expired(600.0)) == []  # gone from the store too
    assert list(lives.expired(901.0)) == [late]
    store.commit(3)
    lives.track(b"due", 700.0)  # due before the walks so far: the next one still finds it
    store.commit(4)
    assert list(lives.expired(902.0)) == [b"due"]
    store.close()


def test_a_rebuild_from_the_compacted_changelog_remembers_what_the_live_table_does(
    tmp_path: Path,
) -> None:
    """Weeks of traffic with short TTLs: the records written and tombstoned batch by
    batch, compacted (latest value per key, tombstones removed), then read back into a
    new store in offset order, give every conversation the live table still has."""
    horizons = {"conversation_ttl": 2 * 86_400.0, "inmail_horizon": 5 * 86_400.0}
    core = PartitionCore(window_size=60, lateness=30, **horizons)
    store = PartitionStore(tmp_path / "live")
    table = core.conversations = StoredConversations(store, cache_size=50)
    lives = RecordLives(store)
    changelog: dict[bytes, tuple[int, bytes]] = {}  # compacted: key -> (offset, value)
    offset = tombstones = 0
    events = _events(25_000, seed=11)
    for start in range(0, len(events), 500):
        batch = BatchWindows()
        for event in events[start:start + 500]:
            if core.admit(event) is None:
                core.add(event, batch)
        table.stage(batch.touched)
        for key, value, expires in conversation_records(
            batch.touched, start, core.conversation_ttl, core.inmail_ttl, core.clock.max_ts,
        ):
            offset += 1
            changelog[key] = (offset, value)
            lives.track(key, expires)
        core.expire()
        for key in list(lives.expired(core.clock.max_ts)):
            offset += 1
            tombstones += 1
            del changelog[key]
        store.commit(offset)
    assert tombstones > 10  # records did expire along the way

    rebuilt = StoredConversations(PartitionStore(tmp_path / "rebuilt"), cache_size=50)
    for key, (_, value) in sorted(changelog.items(), key=lambda item: item[1][0]):
        rebuilt.restore(decode_conversations(value))
    rebuilt.store.commit(offset)
    now = core.clock.max_ts
    remembered = 0
    for event in events:
        conversation = core.conversation(event.conversation_id)
        if conversation is None:
            continue
        lifetime = core.inmail_ttl if conversation.channel == "inmail" else core.conversation_ttl
        if conversation.started_at < now - lifetime:
            continue  # past its TTL: forgotten whether or not it was dropped yet
        remembered += 1
        assert rebuilt.get(event.conversation_id) == conversation, event.conversation_id
    assert remembered > 100
    store.close()
    rebuilt.store.close()


def test_the_ingest_restores_its_state_from_the_records_it_writes(tmp_path: Path) -> None:
    """The stage's restore, without a broker: a batch's records (and one conversation
    record as earlier versions wrote them) read back into a fresh store give the same
    conversations, event ids and clock."""
    from streams.ingest.changelog import CLOCK_KEY
    from streams.ingest.stage import IngestStage
    from streams.settings import Settings

    settings = Settings(state_dir=tmp_path, kafka_bootstrap_servers="127.0.0.1:1")  # unused
    stage = IngestStage(settings, report=lambda report: None)
    live = stage.new_state(0)
    batch = BatchWindows()
    events = _events(3_000, seed=21)
    accepted: dict[str, float] = {}  # id -> ts of its latest acceptance
    for event in events:
        if live.core.admit(event) is None:
            live.core.add(event, batch)
            accepted[event.event_id] = event.ts
    now = live.core.clock.max_ts
    live.core.conversations.stage(batch.touched)
    changed = {cid: live.core.conversation(cid) for cid in batch.touched}
    records = [(key, value) for key, value, _ in conversation_records(
        batch.touched, 2_999, live.core.conversation_ttl, live.core.inmail_ttl, now)]
    records += [(key, value) for key, value, _ in live.core.event_ids.finish_batch(
        IDS_PREFIX, 2_999, now, RECORD_BYTES)]
    records.append((CLOCK_KEY, b'{"max_ts": %r}' % now))
    records.append((b"legacy-1", _conversation(now - 60.0).dumps()))
    live.core.expire()
    live.store.close()

    restored = stage.new_state(1)
    assert restored.store.restore_from(0, len(records)) == 0
    for key, value in records:
        stage.restore_record(restored, key, value)
    restored.restored_through = len(records) - 1
    stage.restored(restored)
    core = restored.core
    assert core.clock.max_ts == now
    # the ids within the dedup horizon are remembered, those past it are not
    horizon = now - core.dedup_horizon
    within = {event_id for event_id, ts in accepted.items() if ts >= horizon}
    assert 10 < len(within) < len(accepted)
    for event in {event.event_id: event for event in events}.values():
        again = msgspec.structs.replace(event, ts=now)
        assert core.admit(again) == ("duplicate_event_id" if event.event_id in within else None)
    for conversation_id, conversation in changed.items():
        assert core.conversation(conversation_id) == conversation
    assert core.conversation("legacy-1") == _conversation(now - 60.0)
    restored.store.commit(len(records))
    assert b"legacy-1" in list(restored.lives.expired(now + 1e9))  # tombstoned in time
    assert len(changed) > 100
    restored.store.close()


def test_a_rewritten_key_is_not_tombstoned_by_its_older_life(tmp_path: Path) -> None:
    """Input offsets start over when the events topic is recreated, and record keys are
    made of them: the newer record must not go when the older one's life ends."""
    store = PartitionStore(tmp_path / "p0")
    lives = RecordLives(store)
    lives.track(b"k", 100.0)
    store.commit(1)
    lives.track(b"k", 500.0)  # the same key, written again
    store.commit(2)
    assert list(lives.expired(200.0)) == []
    store.commit(3)
    assert list(lives.expired(600.0)) == [b"k"]
    store.close()


class _Recorder:
    """Stands in for the Kafka transaction's writer: what a batch would write."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes | None]] = []

    async def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
                  headers: Any = None) -> None:
        self.records.append((topic, key, value))


_numbers = itertools.count()


def _sent(ts: float, cid: str, sender: str, recipient: str, first: bool) -> dict[str, Any]:
    n = next(_numbers)
    return {"event_id": f"e-{n}", "type": "message_sent", "ts": ts, "conversation_id": cid,
            "schema_version": 2, "message_id": f"msg-{n}", "sender_id": sender,
            "recipient_id": recipient, "sender_type": "member", "channel": "connection",
            "content_type": "text", "platform": "web", "entry_point": "inbox",
            "first_in_conversation": first}


def test_a_rebuild_forgets_what_the_live_stage_forgot(tmp_path: Path) -> None:
    """X and Y start in one batch, so one record holds both; X passes its TTL while Y
    keeps the record alive. A reply to X that is not late finds nothing in the live
    stage, and must find nothing after a rebuild from the changelog either."""
    from streams.ingest.stage import IngestStage
    from streams.settings import Settings

    settings = Settings(state_dir=tmp_path, kafka_bootstrap_servers="127.0.0.1:1")  # unused
    stage = IngestStage(settings, report=lambda report: None)
    tp = TopicPartition(settings.events_topic, 0)
    state_topic = settings.ingest_state_topic
    t0, week = 1_790_000_040.0, settings.conversation_ttl_seconds
    changelog: dict[bytes, tuple[int, bytes]] = {}  # compacted: key -> (offset, value)
    offsets = itertools.count()

    def batch(state: Any, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        messages = [SimpleNamespace(key=None, value=orjson.dumps(e), offset=next(offsets))
                    for e in events]
        writer = _Recorder()
        asyncio.run(stage.process(tp, state, messages, writer))  # type: ignore[arg-type]
        for topic, key, value in writer.records:
            if topic == state_topic and key is not None:
                if value is None:
                    changelog.pop(key, None)
                else:
                    changelog[key] = (next(offsets), value)
        state.store.commit(next(offsets))
        return [{**orjson.loads(value), "offset": None}  # offsets differ: they are ours
                for topic, _, value in writer.records if topic == settings.partials_topic]

    live = stage.new_state(0)
    batch(live, [_sent(t0, "x", "a", "b", True), _sent(t0 + 3600, "y", "c", "d", True)])
    # the clock moves a day at most per event (MAX_AHEAD_SECONDS): a day's steps
    steps = [_sent(t0 + 3600 + k * 72_000, f"z{k}", "e", "f", True) for k in range(1, 9)]
    batch(live, [*steps, _sent(t0 + week + 10, "z", "e", "f", True)])
    assert live.core.conversation("x") is None  # past its TTL, dropped
    assert any(b"x" in value for _, value in changelog.values())  # its record lives on

    rebuilt = stage.new_state(1)
    rebuilt.store.restore_from(0, 1)
    for key, (_, value) in sorted(changelog.items(), key=lambda item: item[1][0]):
        stage.restore_record(rebuilt, key, value)
    rebuilt.restored_through = next(offsets)
    stage.restored(rebuilt)
    assert rebuilt.core.conversation("x") is None
    assert rebuilt.core.conversation("y") is not None

    reply = [_sent(t0 + week - 5, "x", "b", "a", False)]  # not late: its window is open
    assert batch(rebuilt, reply) == batch(live, [dict(reply[0])])
    assert live.core.conversation("x") is None and rebuilt.core.conversation("x") is None
    live.store.close()
    rebuilt.store.close()
