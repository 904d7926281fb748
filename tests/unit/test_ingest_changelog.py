"""The ingest's changelog: a few records per batch, tombstoned only once nothing in them
is remembered any more, so that a rebuild from the compacted changelog gives back every
conversation the live table remembers."""

from __future__ import annotations

from pathlib import Path

from streams.ingest.changelog import (
    CONVERSATIONS_PREFIX,
    INMAIL_PREFIX,
    RecordLives,
    conversation_records,
    conversations_expiry,
    decode_conversations,
    id_records,
)
from streams.ingest.conversation_table import Conversation, StoredConversations
from streams.ingest.conversations import BatchWindows, PartitionCore
from streams.store.partition_store import PartitionStore
from tests.unit.test_partition_store import _events


def _conversation(start: float, channel: str = "connection") -> Conversation:
    return Conversation(start, "a", "b", channel, "recruiter" if channel == "inmail" else "member")


def test_a_batch_writes_one_record_per_lifetime_keyed_by_its_offset() -> None:
    changed = [("c-1", _conversation(100.0)), ("c-2", _conversation(300.0, "inmail")),
               ("c-3", _conversation(200.0))]
    records = conversation_records(changed, 41, ttl=1000.0, inmail_ttl=5000.0, now=300.0)
    assert [(key, expires) for key, _, expires in records] == [
        (CONVERSATIONS_PREFIX + b"41:0", 1200.0), (INMAIL_PREFIX + b"41:0", 5300.0),
    ]
    assert decode_conversations(records[0][1]) == [changed[0], changed[2]]
    assert decode_conversations(records[1][1]) == [changed[1]]
    key, value, expires = records[1]
    assert conversations_expiry(key, decode_conversations(value), 1000.0, 5000.0) == expires


def test_a_group_already_past_its_ttl_is_not_written() -> None:
    changed = [("old", _conversation(100.0)), ("inmail", _conversation(100.0, "inmail"))]
    records = conversation_records(changed, 7, ttl=1000.0, inmail_ttl=5000.0, now=1100.5)
    assert [key for key, _, _ in records] == [INMAIL_PREFIX + b"7:0"]


def test_a_large_batch_is_split_into_records_below_the_brokers_message_limit() -> None:
    """Ids are any text: long ones, and ones JSON escapes, still give records under the
    broker's default max.message.bytes (1 MiB), and together the records hold it all."""
    odd = "\x01" * 3000  # six bytes each in JSON
    changed = [(f"c-{i}-{odd if i % 7 == 0 else ''}", _conversation(float(i)))
               for i in range(20_000)]
    records = conversation_records(changed, 9, ttl=1e9, inmail_ttl=1e9, now=0.0)
    assert len(records) > 1
    assert max(len(value) for _, value, _ in records) < 1 << 20
    assert [item for _, value, _ in records for item in decode_conversations(value)] == changed
    assert len({key for key, _, _ in records}) == len(records)
    accepted = [(f"e-{i}" + odd * (i % 50 == 0), 1_000.0 + i) for i in range(50_000)]
    ids = id_records(accepted, 9, horizon=3600.0, now=0.0)
    assert len(ids) > 1 and max(len(value) for _, value, _ in ids) < 1 << 20
    assert [expires for _, _, expires in ids] == sorted(expires for _, _, expires in ids)


def test_record_lives_yield_each_expired_record_once_in_expiry_order(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0")
    lives = RecordLives(store)
    for key, expires in ((b"late", 900.0), (b"early", 100.0), (b"mid", 500.0)):
        store.stage(key, b"v")
        lives.track(key, expires)
    store.commit(1)
    assert list(lives.expired(600.0)) == [b"early", b"mid"]
    assert store.get(b"early") is None and store.get(b"late") == b"v"
    store.commit(2)
    assert list(lives.expired(600.0)) == []
    assert list(RecordLives(store).expired(600.0)) == []  # gone from the store too
    assert list(lives.expired(901.0)) == [b"late"]
    store.commit(3)
    store.stage(b"due", b"v")
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
        for key, value, expires in conversation_records(
            table.stage(batch.touched), start, core.conversation_ttl, core.inmail_ttl,
            core.clock.max_ts,
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
    for event in events:
        if live.core.admit(event) is None:
            live.core.add(event, batch)
    now = live.core.clock.max_ts
    changed = live.core.conversations.stage(batch.touched)
    records = [(key, value) for key, value, _ in conversation_records(
        changed, 2_999, live.core.conversation_ttl, live.core.inmail_ttl, now)]
    records += [(key, value) for key, value, _ in id_records(
        batch.event_ids, 2_999, live.core.dedup_horizon, now)]
    records.append((CLOCK_KEY, b'{"max_ts": %r}' % now))
    records.append((b"legacy-1", _conversation(now - 60.0).dumps()))
    live.core.expire()
    remembered_ids = dict(live.core.event_ids)  # those within the dedup horizon
    live.store.close()

    restored = stage.new_state(1)
    assert restored.store.restore_from(0, len(records)) == 0
    for key, value in records:
        stage.restore_record(restored, key, value)
    restored.restored_through = len(records) - 1
    stage.restored(restored)
    core = restored.core
    assert core.clock.max_ts == now
    horizon = now - core.dedup_horizon
    assert {i: ts for i, ts in core.event_ids.items() if ts >= horizon} == remembered_ids
    assert len(remembered_ids) > 10
    for conversation_id, conversation in changed:
        assert core.conversation(conversation_id) == conversation
    assert core.conversation("legacy-1") == _conversation(now - 60.0)
    assert len(changed) > 100
    restored.store.close()
