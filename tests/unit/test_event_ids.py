"""Event ids beyond the in-memory cache are spilled (a Bloom filter, fingerprints, the
ids in the store) and deduplication stays exactly what it is with every id in memory,
live and after a rebuild from the changelog."""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from producers.profile import SimulationProfile
from producers.simulator import Simulator
from streams.ingest import event_ids
from streams.ingest.changelog import ids_record_holds
from streams.ingest.event_ids import SpilledEventIds
from streams.ingest.stage import IngestPartition, IngestStage
from streams.settings import Settings
from streams.store.partition_store import PartitionStore

HORIZON = 600.0


class _Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes | None, Any]] = []

    async def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
                  headers: Any = None) -> None:
        self.records.append((topic, key, value, headers))


def _stream(n: int, seed: int) -> list[dict[str, Any]]:
    """Simulator events, a tenth of them sent again later: most as they were (a
    redelivery, near or far: within the dedup horizon or past it), some with the same
    id and a new time (a producer reusing ids), so that an id is also accepted twice."""
    # about 0.2 s of event time an event: the horizon holds some 3,000
    simulator = Simulator(SimulationProfile(), seed=seed, start_ts=1_790_000_000.0, rate=20.0,
                          speed=5.0, members=300)
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for raw in itertools.islice(simulator.events(), n):
        events.append(raw)
        if len(events) > 10 and rng.random() < 0.1:
            earlier = dict(events[-rng.choice((2, 50, 500, 3_000, 8_000)) % len(events)])
            if rng.random() < 0.2:
                earlier["ts"] = raw["ts"]
            events.append(earlier)
    return events


class _Run:
    """One stage over the stream, batch by batch, with the changelog it writes."""

    def __init__(self, tmp_path: Path, name: str, cache: int) -> None:
        self.settings = Settings(
            state_dir=tmp_path / name, kafka_bootstrap_servers="127.0.0.1:1",  # unused
            state_cache_event_ids=cache, dedup_horizon_seconds=HORIZON,
        )
        self.stage = IngestStage(self.settings, report=lambda report: None)
        self.tp = TopicPartition(self.settings.events_topic, 0)
        self.state = self.stage.new_state(0)
        self.changelog: dict[bytes, tuple[int, bytes]] = {}  # compacted
        self.offsets = itertools.count()
        self.rejected: list[tuple[int, bytes]] = []  # (input offset, reason)
        self.most_in_memory = 0

    def batch(self, events: list[dict[str, Any]], first_offset: int) -> None:
        messages = [SimpleNamespace(key=None, value=orjson.dumps(e), offset=first_offset + i)
                    for i, e in enumerate(events)]
        writer = _Recorder()
        asyncio.run(self.stage.process(self.tp, self.state, messages, writer))  # type: ignore[arg-type]
        for topic, key, value, headers in writer.records:
            if topic == self.settings.ingest_state_topic and key is not None:
                if value is None:
                    self.changelog.pop(key, None)
                else:
                    self.changelog[key] = (next(self.offsets), value)
            elif topic == self.settings.dlq_topic:
                source = dict(headers)["dlq.source"].decode()
                self.rejected.append((int(source.rsplit("/", 1)[1]), dict(headers)["dlq.reason"]))
        self.state.store.commit(next(self.offsets))
        self.most_in_memory = max(self.most_in_memory, len(self.state.core.event_ids))

    def rebuild(self) -> None:
        """A new owner of the partition: a new store, restored from the changelog."""
        self.state.store.close()
        rebuilt: IngestPartition = self.stage.new_state(1)
        rebuilt.store.restore_from(0, 1)
        for key, (_, value) in sorted(self.changelog.items(), key=lambda item: item[1][0]):
            self.stage.restore_record(rebuilt, key, value)
        rebuilt.restored_through = next(self.offsets)
        self.stage.restored(rebuilt)
        self.state = rebuilt


def test_spilled_ids_reject_exactly_the_duplicates_that_ids_in_memory_do(
    tmp_path: Path, monkeypatch: Any,
) -> None:
    found_spilled = 0
    seen = SpilledEventIds.seen

    def counted(self: SpilledEventIds, event_id: str, oldest: float) -> bool:
        nonlocal found_spilled
        answer = seen(self, event_id, oldest)
        found_spilled += answer
        return answer

    monkeypatch.setattr(SpilledEventIds, "seen", counted)
    events = _stream(24_000, seed=5)
    memory, spilling = _Run(tmp_path, "memory", cache=10**9), _Run(tmp_path, "spill", cache=300)
    half = len(events) // 2
    for start in range(0, len(events), 250):
        if start == half // 250 * 250:
            spilling.rebuild()  # restored: the newest ids in memory, the others spilled
        for run in (memory, spilling):
            run.batch(events[start:start + 250], start)
    duplicates = [offset for offset, reason in memory.rejected if reason == b"duplicate_event_id"]
    assert len(duplicates) > 500
    assert spilling.rejected == memory.rejected
    assert found_spilled > 200  # found only among the spilled ids, beyond the cache
    assert memory.most_in_memory > 3_000  # the horizon's ids
    assert spilling.most_in_memory <= 300 + 250  # the cache, and the batch in flight
    assert spilling.state.core.spilled_ids.fingerprints > 1_000  # type: ignore[union-attr]
    memory.state.store.close()
    spilling.state.store.close()


def test_a_fingerprint_match_is_confirmed_against_the_ids_in_the_store(tmp_path: Path) -> None:
    """Two ids with one 64-bit fingerprint are told apart: the record read back holds the
    ids themselves. Here the record holds another id than the one fingerprinted."""
    store = PartitionStore(tmp_path / "p0")
    spilled = SpilledEventIds(store, cache=1)
    store.stage(b"r1", orjson.dumps([["other", 100.0]]))
    spilled._spill(b"r1", 100.0, [("mine", 100.0)], {})  # fingerprints of "mine"
    assert hash("mine") in spilled.bloom
    assert not spilled.seen("mine", oldest=0.0)
    store.stage(b"r2", orjson.dumps([["mine", 100.0]]))
    spilled._spill(b"r2", 100.0, [("mine", 100.0)], {})
    assert spilled.seen("mine", oldest=100.0)
    assert not spilled.seen("mine", oldest=100.5)  # past the horizon
    store.stage(b"r2", None)  # forgotten with its life
    assert not spilled.seen("mine", oldest=0.0)
    store.close()


def test_the_filter_is_rebuilt_before_it_fills_and_after_records_expire(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "p0")
    spilled = SpilledEventIds(store, cache=10)
    memory: dict[str, float] = {}
    for n in range(200):
        ids = [(f"e-{n}-{i}", float(n)) for i in range(7)]
        store.stage(b"r%d" % n, orjson.dumps(ids))
        memory.update(ids)
        spilled.recorded(b"r%d" % n, ids, float(n), memory)
        assert len(memory) <= 10 + 7
        assert spilled.bloom.approx_items <= 2 * max(spilled.fingerprints, 10) * 1.2
        spilled.expire(n - 50.0)
        for event_id in [i for i, ts in memory.items() if ts < n - 50.0]:
            del memory[event_id]  # as the core's walk does
    within = [f"e-{n}-{i}" for n in range(150, 198) for i in range(7)]
    assert all(hash(event_id) in spilled.bloom for event_id in within)  # no false negative
    assert all(spilled.seen(f"e-{n}-3", oldest=150.0) for n in range(150, 198))
    assert not any(spilled.seen(f"e-{n}-3", oldest=150.0) for n in range(100, 150))
    assert spilled.fingerprints == sum(len(s.fingerprints) for s in spilled.spilled) < 60 * 7
    assert event_ids.FALSE_POSITIVE_RATE <= 0.01
    store.close()


_IDS = st.text(alphabet=st.sampled_from('ab"\\[],: é\u2028'), min_size=0, max_size=6)
_TS = st.one_of(st.integers(0, 9), st.floats(0, 9, allow_nan=False).map(lambda t: round(t, 3)))


@settings(max_examples=400, deadline=None)
@given(records=st.lists(st.tuples(_IDS, _TS), max_size=12), event_id=_IDS, oldest=_TS)
def test_a_record_is_searched_in_its_bytes_as_decoding_it_would_answer(
    records: list[tuple[str, float]], event_id: str, oldest: float,
) -> None:
    """Ids made of JSON's own punctuation, quotes and escapes, one id the prefix of
    another, the same id twice with two ts, ts written as ints and as floats."""
    record = orjson.dumps(records)
    decoded = any(seen == event_id and ts >= oldest for seen, ts in orjson.loads(record))
    assert ids_record_holds(record, event_id, oldest) == decoded
