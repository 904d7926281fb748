"""The ingest's on-disk state: the local store and its checkpoint, and conversations on
disk behind a small cache giving exactly what the all-in-memory table gives."""

from __future__ import annotations

import os
import struct
from itertools import islice
from pathlib import Path

import orjson

from producers.simulator import SimulationProfile, Simulator
from streams.events import parse
from streams.ingest.conversation_table import StoredConversations
from streams.ingest.conversations import BatchWindows, PartitionCore
from streams.store.partition_store import USAGE_PARTS, PartitionStore, total_usage


def test_staged_writes_are_seen_at_once_and_kept_only_once_committed(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0")
    store.stage(b"a", b"1")
    store.commit(7)
    store.stage(b"b", b"2")
    store.stage(b"a", None)
    assert (store.get(b"a"), store.get(b"b")) == (None, b"2")  # the batch in flight reads its own
    store.close()  # its transaction never committed: dropped
    store = PartitionStore(tmp_path / "p0")
    assert (store.get(b"a"), store.get(b"b"), store.checkpoint()) == (b"1", None, 7)
    assert store.rebuilt is None
    store.close()


def test_the_store_reports_its_keys_and_what_rocksdb_holds_in_memory(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0")
    empty = store.memory_bytes()
    assert set(empty) == {"memtables", "block_cache", "table_readers"}
    for n in range(0, 20_000, 1_000):
        for key in range(n, n + 1_000):
            store.stage(b"k%d" % key, b"v" * 100)
        store.commit(n)
    assert store.count_estimate() >= 20_000
    assert store.memory_bytes()["memtables"] > empty["memtables"] + 2_000_000  # 2 MB of values
    store.close()


def test_usage_adds_the_table_files_on_disk_and_sums_over_the_open_stores(tmp_path: Path) -> None:
    first = PartitionStore(tmp_path / "p0")
    for key in range(5_000):
        first.stage(b"k%d" % key, os.urandom(100))  # incompressible
    first.commit(1)
    first.close()
    first = PartitionStore(tmp_path / "p0")  # its memtable was written to a table file
    second, gone = PartitionStore(tmp_path / "p1"), PartitionStore(tmp_path / "p2")
    gone.close()  # a partition just given up counts nothing, and fails nothing
    usage = first.usage()
    assert set(usage) == set(USAGE_PARTS)
    assert usage["sst_files"] > 5_000 * 100
    total = total_usage([first, second, gone])
    assert total == {part: usage[part] + size for part, size in second.usage().items()}
    assert total_usage([]) == dict.fromkeys(USAGE_PARTS, 0)
    first.close()
    second.close()


def test_restore_reads_only_the_tail_of_the_changelog_the_store_reflects(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0")
    store.stage(b"a", b"1")
    store.commit(41)
    assert store.restore_from(0, 100) == 42
    assert store.rebuilt is None and store.get(b"a") == b"1"
    store.close()


def test_a_missing_store_is_built_from_the_whole_changelog(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "never-written")
    assert store.restore_from(3, 100) == 3
    assert store.rebuilt == "empty"
    store.close()


def test_a_store_older_than_the_changelog_start_is_wiped_and_rebuilt(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0")
    store.stage(b"stale", b"x")
    store.commit(10)
    assert store.restore_from(50, 100) == 50  # offsets 11..49 are gone: it cannot catch up
    assert store.rebuilt and "older than the changelog" in store.rebuilt
    assert store.get(b"stale") is None and store.checkpoint() is None
    store.close()


def test_a_store_newer_than_the_changelog_is_wiped_and_rebuilt(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0")
    store.stage(b"stale", b"x")
    store.commit(500)
    assert store.restore_from(0, 20) == 0  # the topic was recreated: a different changelog
    assert store.rebuilt and "newer than the changelog" in store.rebuilt
    assert store.get(b"stale") is None
    store.close()


def test_a_corrupt_store_is_wiped_and_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "p0"
    store = PartitionStore(path)
    for i in range(1000):
        store.stage(b"k%d" % i, b"v" * 100)
    store.commit(5)
    store.close()
    for name in ("CURRENT", *(f.name for f in path.glob("MANIFEST-*"))):
        (path / name).write_bytes(b"\x00garbage\x00" * 10)
    store = PartitionStore(path)
    assert store.rebuilt and store.rebuilt.startswith("unreadable")
    assert store.checkpoint() is None and store.get(b"k1") is None
    assert store.restore_from(0, 10) == 0
    store.close()


def test_a_store_without_a_checkpoint_is_not_trusted(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0")
    store.stage(b"half", b"written")
    store.commit(None)  # data, but no offset it reflects
    assert store.restore_from(0, 10) == 0
    assert store.rebuilt == "no checkpoint" and store.get(b"half") is None
    store.close()


def test_a_store_another_version_laid_out_is_wiped_and_rebuilt(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0", layout=b"old")
    store.stage(b"a", b"1")
    store.commit(5)
    store.close()
    store = PartitionStore(tmp_path / "p0", layout=b"new")
    assert store.restore_from(0, 10) == 0
    assert store.rebuilt and "another version" in store.rebuilt and store.get(b"a") is None
    store.close()


def _events(n: int, seed: int) -> list:
    simulator = Simulator(SimulationProfile(), seed=seed, start_ts=1_790_000_000.0, rate=20.0,
                          speed=3600.0, members=300)
    events = []
    for raw in islice(simulator.events(), n):
        event, rejection = parse(orjson.dumps(raw), 65_536)
        assert rejection is None
        events.append(event)
    return events


def _core(**horizons: float) -> PartitionCore:
    return PartitionCore(window_size=60, lateness=30, **horizons)


def test_conversations_on_disk_behind_a_tiny_cache_count_exactly_as_in_memory(
    tmp_path: Path,
) -> None:
    """Days of simulated traffic with short TTLs (so expiry runs all the time): every
    batch's counts and changelog records, and every expiry, are the same as the
    all-in-memory table's; the cache never holds more than its size between batches."""
    horizons = {"conversation_ttl": 6 * 3600.0, "inmail_horizon": 12 * 3600.0}
    memory = _core(**horizons)
    stored = _core(**horizons)
    store = PartitionStore(tmp_path / "p0")
    table = stored.conversations = StoredConversations(store, cache_size=25)
    events = _events(20_000, seed=3)
    offset = 0
    for start in range(0, len(events), 700):
        expected, got = BatchWindows(), BatchWindows()
        for event in events[start:start + 700]:
            assert memory.admit(event) == stored.admit(event)
            assert memory.add(event, expected) == stored.add(event, got)
        assert got.counts == expected.counts and got.reply_cohorts == expected.reply_cohorts
        assert got.inmail_cohorts == expected.inmail_cohorts
        assert got.touched == expected.touched  # the same changes, encoded the same
        table.stage(got.touched)
        assert len(table._cache) <= 25
        assert sorted(stored.expire()) == sorted(memory.expire())
        offset += 700
        store.commit(offset)
    assert len(memory.conversations) > 25  # the cache was far smaller than the state
    store.close()


def test_a_reopened_store_gives_the_same_conversations(tmp_path: Path) -> None:
    core = _core()
    store = PartitionStore(tmp_path / "p0")
    core.conversations = StoredConversations(store, cache_size=10)
    batch = BatchWindows()
    for event in _events(3_000, seed=5):
        core.add(event, batch)
    core.conversations.stage(batch.touched)
    records = {cid: core.conversation(cid) for cid in batch.touched}
    store.commit(1)
    store.close()
    reopened = StoredConversations(PartitionStore(tmp_path / "p0"), cache_size=10)
    for conversation_id, value in records.items():
        assert reopened.get(conversation_id) == value
    reopened.store.close()


def _stage(table: StoredConversations, *conversation_ids: str) -> None:
    """Stage conversations as a batch that changed them would."""
    batch = BatchWindows()
    for conversation_id in conversation_ids:
        batch.touch(conversation_id, table.get(conversation_id))  # type: ignore[arg-type]
    table.stage(batch.touched)


def test_a_conversation_started_again_past_its_ttl_is_not_expired_by_its_old_start(
    tmp_path: Path,
) -> None:
    from streams.ingest.conversation_table import Conversation

    store = PartitionStore(tmp_path / "p0")
    table = StoredConversations(store, cache_size=10)
    table.add("c-1", Conversation(1000.0, "a", "b", "connection", "member"))
    _stage(table, "c-1")
    assert table.expire(0.0, 0.0) == []
    store.commit(1)
    # the id comes back after its TTL: a new conversation, a new start
    table.add("c-1", Conversation(9000.0, "x", "y", "connection", "member"))
    _stage(table, "c-1")
    assert table.expire(2000.0, 2000.0) == []  # past the old start, not the new one
    store.commit(2)
    again = table.get("c-1")
    assert again is not None and again.started_at == 9000.0
    # one entry of starts left, the new life's (the old one's was walked and dropped)
    assert [key for key, _ in store.items(b"s")] == [b"sc" + struct.pack(">d", 9000.0) + b"c-1"]
    assert table.expire(9500.0, 9500.0) == ["c-1"]
    store.close()


def test_a_batch_of_starts_on_both_sides_of_the_horizon_expires_each_in_time(
    tmp_path: Path,
) -> None:
    """A batch's new conversations share one entry of starts: one past the horizon goes,
    the other is kept under its own start until it is due, also when read back."""
    from streams.ingest.conversation_table import Conversation

    store = PartitionStore(tmp_path / "p0")
    table = StoredConversations(store, cache_size=10)
    for conversation_id, start in (("a", 100.0), ("b", 5000.0)):
        table.add(conversation_id, Conversation(start, "x", "y", "connection", "member"))
    _stage(table, "a", "b")
    assert table.expire(0.0, 0.0) == []
    store.commit(1)
    assert table.expire(1000.0, 1000.0) == ["a"]
    store.commit(2)
    assert table.get("a") is None and table.get("b") is not None
    assert table.expire(4000.0, 4000.0) == []
    store.commit(3)
    assert table.expire(6000.0, 6000.0) == ["b"]
    store.commit(4)
    assert list(store.items(b"s")) == [] and list(store.items(b"c")) == []
    store.close()

    rebuilt = StoredConversations(PartitionStore(tmp_path / "p1"), cache_size=10)
    rebuilt.restore([("a", Conversation(100.0, "x", "y", "connection", "member")),
                     ("b", Conversation(5000.0, "x", "y", "connection", "member"))])
    rebuilt.store.commit(1)
    rebuilt.restored()
    assert rebuilt.expire(1000.0, 1000.0) == ["a"]
    rebuilt.store.commit(2)
    assert rebuilt.get("b") is not None
    rebuilt.store.close()
