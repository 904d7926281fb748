"""The event ids of the dedup horizon (``messaging_native.EventIds``, in Rust): 32-bit
fingerprints in memory, the ids themselves in the changelog records the store keeps.
Deduplication is exact: a fingerprint's match is confirmed against the id, and ids whose
fingerprints collide are told apart, live and after a rebuild from the changelog."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st
from messaging_native import CONFIRM, DUPLICATE, NEW, EventIds

from producers.profile import SimulationProfile
from producers.simulator import Simulator
from streams.events import MAX_TS, MIN_TS
from streams.ingest.changelog import ids_record_holds
from streams.ingest.conversations import PartitionCore
from streams.ingest.stage import IngestPartition, IngestStage
from streams.settings import Settings
from streams.store.records import chunks

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

    def __init__(self, tmp_path: Path, name: str, fingerprint_bits: int = 32) -> None:
        self.settings = Settings(
            state_dir=tmp_path / name, kafka_bootstrap_servers="127.0.0.1:1",  # unused
            dedup_horizon_seconds=HORIZON,
        )
        self.fingerprint_bits = fingerprint_bits
        self.stage = IngestStage(self.settings, report=lambda report: None)
        self.tp = TopicPartition(self.settings.events_topic, 0)
        self.state = self._new_state(0)
        self.changelog: dict[bytes, tuple[int, bytes]] = {}  # compacted
        self.offsets = itertools.count()
        self.rejected: list[tuple[int, bytes]] = []  # (input offset, reason)

    def _new_state(self, partition: int) -> IngestPartition:
        state = self.stage.new_state(partition)
        state.core.event_ids = EventIds(HORIZON, self.fingerprint_bits)
        return state

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

    def rebuild(self) -> None:
        """A new owner of the partition: a new store, restored from the changelog."""
        self.state.store.close()
        rebuilt = self._new_state(1)
        rebuilt.store.restore_from(0, 1)
        for key, (_, value) in sorted(self.changelog.items(), key=lambda item: item[1][0]):
            self.stage.restore_record(rebuilt, key, value)
        rebuilt.restored_through = next(self.offsets)
        self.stage.restored(rebuilt)
        self.state = rebuilt


def _reference_verdicts(events: list[dict[str, Any]]) -> list[tuple[int, bytes]]:
    """Every id's latest acceptance in a dict: an event is a duplicate if its id was
    accepted with ts within the horizon of the partition's newest ts so far."""
    latest: dict[str, float] = {}
    newest = -math.inf
    rejected = []
    for offset, event in enumerate(events):
        seen = latest.get(event["event_id"])
        if seen is not None and seen >= newest - HORIZON:
            rejected.append((offset, b"duplicate_event_id"))
            continue
        latest[event["event_id"]] = event["ts"]
        newest = max(newest, event["ts"])
    return rejected


@pytest.mark.parametrize("fingerprint_bits", [32, 5])
def test_duplicates_are_rejected_exactly_live_and_after_a_rebuild(
    tmp_path: Path, monkeypatch: Any, fingerprint_bits: int,
) -> None:
    """With 5-bit fingerprints nearly every id collides with another: the answers must
    not change, only how often a record is read to confirm one."""
    confirmed = 0
    confirm = PartitionCore._confirm

    def counted(self: PartitionCore, event_id: str, ts: float, oldest: float) -> str | None:
        nonlocal confirmed
        confirmed += 1
        return confirm(self, event_id, ts, oldest)

    monkeypatch.setattr(PartitionCore, "_confirm", counted)
    events = _stream(24_000, seed=5)
    run = _Run(tmp_path, "run", fingerprint_bits)
    half = len(events) // 2
    for start in range(0, len(events), 250):
        if start == half // 250 * 250:
            run.rebuild()  # restored from the changelog: fingerprints of the records' ids
        run.batch(events[start:start + 250], start)
    duplicates = [offset for offset, reason in run.rejected if reason == b"duplicate_event_id"]
    assert len(duplicates) > 500
    assert run.rejected == _reference_verdicts(events)
    assert confirmed > (5_000 if fingerprint_bits < 32 else 200)  # records read back
    assert len(run.state.core.event_ids) < 8_000  # the horizon's ids, not all 26,000
    run.state.store.close()


class _Model:
    """The EventIds under test beside a dict of every id's latest acceptance, with the
    store's records as a dict (a record is forgotten with its life, as the stage's)."""

    def __init__(self, fingerprint_bits: int) -> None:
        self.bits = fingerprint_bits
        self.ids = EventIds(HORIZON, fingerprint_bits)
        self.latest: dict[str, float] = {}
        self.records: dict[bytes, tuple[bytes, float]] = {}  # key -> (value, newest)
        self.newest = -math.inf
        self.offset = 0

    def admit(self, event_id: str, ts: float) -> None:
        oldest = self.newest - HORIZON
        seen = self.latest.get(event_id)
        expected = seen is not None and seen >= oldest
        verdict = self.ids.admit(event_id, ts, oldest)
        if verdict == CONFIRM:
            key = self.ids.record_of_id(event_id)
            assert key is not None
            value = self.records.get(key, (None, 0.0))[0]
            duplicate = value is not None and ids_record_holds(value, event_id, oldest)
            if not duplicate:
                self.ids.accept(event_id, ts, oldest)
        else:
            assert verdict in (NEW, DUPLICATE)
            duplicate = verdict == DUPLICATE
        assert duplicate == expected, (event_id, ts, oldest, seen)
        if not duplicate:
            self.latest[event_id] = ts
            self.newest = max(self.newest, ts)

    def finish_batch(self) -> None:
        self.offset += 1
        for key, value, newest in self.ids.finish_batch(b"i:", self.offset, self.newest, 200):
            self.records[key] = (value, newest)
        oldest = self.newest - HORIZON
        self.ids.expire(oldest)
        for key in [key for key, (_, newest) in self.records.items() if newest < oldest]:
            del self.records[key]

    def restore(self) -> None:
        self.finish_batch()
        self.ids = EventIds(HORIZON, self.bits)
        self.ids.restore([(key, value) for key, (value, _) in self.records.items()],
                         self.newest - HORIZON)


_OPS = st.lists(st.one_of(
    st.tuples(st.just("admit"), st.sampled_from([f"e{i}" for i in range(12)] + ['"q\\"']),
              st.integers(0, 3 * int(HORIZON)).map(float)),
    st.tuples(st.just("finish"), st.none(), st.none()),
    st.tuples(st.just("restore"), st.none(), st.none()),
), max_size=120)


@settings(max_examples=300, deadline=None)
@given(ops=_OPS, fingerprint_bits=st.sampled_from([1, 3, 32]))
def test_event_ids_answer_as_a_dict_of_every_ids_latest_acceptance(
    ops: list[tuple[str, str | None, float | None]], fingerprint_bits: int,
) -> None:
    model = _Model(fingerprint_bits)
    for op, event_id, ts in ops:
        if op == "admit":
            assert event_id is not None and ts is not None
            model.admit(event_id, ts)
        elif op == "finish":
            model.finish_batch()
        else:
            model.restore()


def test_a_restore_keeps_an_ids_newer_copy_whatever_order_it_reads_records_in() -> None:
    """A restore reads records by their newest ts. Here the record of an id's second
    acceptance (its first was past the horizon by then) has an older newest than the
    record of the first, and is read first: the first must not take its place."""
    for fingerprint_bits in (32, 1):
        model = _Model(fingerprint_bits)
        model.admit("x", 300.0)
        model.admit("y", 1_500.0)
        model.finish_batch()  # newest 1,500
        model.admit("x", 1_211.0)  # x at 300 is past the horizon (900): accepted again
        model.finish_batch()  # newest 1,211
        model.restore()
        model.admit("z", 1_785.0)  # the horizon is 1,185 now
        model.admit("x", 774.0)  # a duplicate of x at 1,211: the model asserts it


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32), fingerprint_bits=st.sampled_from([1, 2, 8, 32]),
       ids=st.sampled_from([3, 10, 50]))
def test_event_ids_answer_as_the_dict_over_long_random_runs(
    seed: int, fingerprint_bits: int, ids: int,
) -> None:
    """Longer runs than the shrinking test above: ids accepted again past the horizon,
    late events, batches and restores among them."""
    rng = random.Random(seed)
    model = _Model(fingerprint_bits)
    for _ in range(rng.randint(10, 400)):
        roll = rng.random()
        if roll < 0.85:
            model.admit(f"e{rng.randrange(ids)}", float(rng.randrange(0, 3 * int(HORIZON))))
        elif roll < 0.97:
            model.finish_batch()
        else:
            model.restore()


@settings(max_examples=200, deadline=None)
@given(accepted=st.lists(st.tuples(
    st.text(min_size=1, max_size=40),
    st.floats(MIN_TS, MAX_TS, exclude_max=True, allow_nan=False),
), max_size=60), record_bytes=st.sampled_from([40, 300, 128 * 1024]))
def test_a_batchs_records_are_what_orjson_and_the_chunking_would_write(
    accepted: list[tuple[str, float]], record_bytes: int,
) -> None:
    """Byte for byte: ``ids_record_holds`` searches a record for the id as orjson
    writes it, and the records are cut where :func:`chunks` cuts them."""
    ids = EventIds(HORIZON)
    for event_id, ts in accepted:
        ids.accept(event_id, ts, -math.inf)  # the same id twice stays twice, in order
    written = ids.finish_batch(b"\x00ids:", 7, -math.inf, record_bytes)
    sizes = [len(event_id) + 32 for event_id, _ in accepted]
    expected = chunks(accepted, sizes, record_bytes)
    assert [key for key, _, _ in written] == [b"\x00ids:7:%d" % n for n in range(len(expected))]
    assert [value for _, value, _ in written] == [orjson.dumps(chunk) for chunk in expected]
    assert [newest for _, _, newest in written] == [max(ts for _, ts in c) for c in expected]


def test_a_restore_refuses_a_record_it_cannot_read() -> None:
    ids = EventIds(HORIZON)
    with pytest.raises(ValueError, match="not a record of event ids"):
        ids.restore([(b"i:1:0", b'[["a", 1.0], oops]')], 0.0)
    ids = EventIds(HORIZON)
    ids.restore([(b"i:1:0", orjson.dumps([["a\n\u2028\"", 5], ["b", 6.5]]))], 0.0)
    assert ids.admit("a\n\u2028\"", 7.0, 0.0) == CONFIRM  # the record holds it
    assert ids.record_of_id("a\n\u2028\"") == b"i:1:0"
    assert ids.admit("c", 7.0, 0.0) == NEW and len(ids) == 3


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
