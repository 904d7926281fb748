"""The risk stage's state: InMail history behind an index by due time (in memory or on
disk), per-batch changelog records, and restores from them, judged against the
eager all-in-memory rules earlier versions ran (kept here as the oracle)."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import shutil
import tracemalloc
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
from aiokafka.structs import TopicPartition

from streams.risk.changelog import (
    HISTORY_PREFIX,
    SNAPSHOT_KEY,
    decode_history,
    history_key,
    history_sender,
)
from streams.risk.inmail import StoredInmail
from streams.risk.rules import Flag, RiskRules, RiskState
from streams.risk.stage import RiskPartition, RiskStage
from streams.settings import Settings
from streams.store.partition_store import PartitionStore
from streams.windows import GlobalWatermark

SIZE, BUCKET, HORIZON = 60, 600, 1800  # short horizons: expiry happens all the time
T0 = 1_790_000_040
RULES = RiskRules(velocity_messages=8, spam_reports=2, inmail_min_sent=4,
                  inmail_min_response_rate=0.3, inmail_horizon=HORIZON, inmail_bucket=BUCKET)


@dataclass
class EagerRiskState:
    """The rules as earlier versions ran them (every recruiter's history in a dict,
    walked at every window close): the oracle."""

    rules: RiskRules
    windows: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    inmail: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    responses: dict[int, dict[str, dict[int, int]]] = field(default_factory=dict)
    watermark: GlobalWatermark = field(default_factory=lambda: GlobalWatermark(SIZE))

    def apply(self, record: dict[str, Any]) -> list[Flag]:
        if record["kind"] == "activity":
            for start_text, senders in record["windows"].items():
                if int(start_text) + SIZE > self.watermark.value:
                    window = self.windows.setdefault(int(start_text), {})
                    for sender, counts in senders.items():
                        total = window.setdefault(sender, [0, 0, 0])
                        for i, value in enumerate(counts):
                            total[i] += value
            for start_text, senders in record.get("inmail_responses", {}).items():
                if int(start_text) + SIZE > self.watermark.value:
                    window = self.responses.setdefault(int(start_text), {})
                    for sender, buckets in senders.items():
                        mine = window.setdefault(sender, {})
                        for b, n in buckets.items():
                            mine[int(b)] = mine.get(int(b), 0) + n
            return []
        value = self.watermark.apply_mark(record)
        flags: list[Flag] = []
        for start in sorted(s for s in {*self.windows, *self.responses} if s + SIZE <= value):
            flags.extend(self._close(start))
        return flags

    def _close(self, start: int) -> list[Flag]:
        rules, end = self.rules, start + SIZE
        senders = self.windows.pop(start, {})
        for sender, buckets in self.responses.pop(start, {}).items():
            mine = self.inmail.setdefault(sender, {})
            for b, n in buckets.items():
                mine.setdefault(b, [0, 0])[1] += n
        flags, recruiters = [], []
        bucket = math.floor(start / BUCKET) * BUCKET
        for sender, (sent, reports, inmails) in senders.items():
            if sent >= rules.velocity_messages:
                flags.append(Flag("velocity", sender, start, end, {"messages": sent}))
            if reports >= rules.spam_reports:
                flags.append(Flag("spam_reports", sender, start, end,
                                  {"reports_received": reports}))
            if inmails:
                self.inmail.setdefault(sender, {}).setdefault(bucket, [0, 0])[0] += inmails
                recruiters.append(sender)
        flags.sort(key=attrgetter("sender_id"))
        oldest = end - HORIZON
        for sender in list(self.inmail):
            buckets = self.inmail[sender]
            for b in [b for b in buckets if b + BUCKET <= oldest]:
                del buckets[b]
            if not buckets:
                del self.inmail[sender]
        for sender in sorted(recruiters):
            buckets = self.inmail.get(sender, {})
            sent = sum(v[0] for v in buckets.values())
            answered = sum(v[1] for v in buckets.values())
            if sent >= rules.inmail_min_sent and answered / sent < rules.inmail_min_response_rate:
                flags.append(Flag("inmail_response", sender, start, end, {
                    "inmails": sent, "responses": answered,
                    "response_rate": round(answered / sent, 4), "horizon_seconds": HORIZON,
                }))
        return flags


def activity_stream(seed: int, steps: int, senders: int = 80) -> list[dict[str, Any]]:
    """Activity and marks as the ingest sends them, from two sources: windows a few
    minutes back (some late), recruiters' InMails and responses to sends up to twice the
    horizon back, and watermark jumps (idle sources) that close many windows at once.
    Some sender ids are long or need JSON's escapes."""
    rng = random.Random(seed)
    names = [f"s{i}" + ("\x01é" * (i % 7 == 0)) for i in range(senders)]
    recruiters = names[: senders // 3]
    records: list[dict[str, Any]] = []
    t = float(T0)
    for step in range(steps):
        t += rng.choice([0, 5, 20, 40, 60, 90, 300, 1200])
        windows: dict[str, dict[str, list[int]]] = {}
        responses: dict[str, dict[str, dict[str, int]]] = {}
        for _ in range(rng.randint(0, 3)):
            start = math.floor((t - rng.choice([0, 0, 0, 30, 60, 200])) / SIZE) * SIZE
            window = windows.setdefault(str(start), {})
            for sender in rng.sample(names, rng.randint(0, 10)):
                window[sender] = [rng.randint(0, 5), int(rng.random() < 0.2),
                                  rng.randint(0, 3) if sender in recruiters else 0]
            if rng.random() < 0.6:
                answered = responses.setdefault(str(start), {})
                for sender in rng.sample(recruiters, rng.randint(1, 4)):
                    sent_at = t - rng.uniform(0, 2 * HORIZON)
                    answered[sender] = {str(math.floor(sent_at / BUCKET) * BUCKET): rng.randint(0, 2)}
        record: dict[str, Any] = {"kind": "activity", "source": step % 2, "offset": step,
                                  "windows": windows}
        if responses:
            record["inmail_responses"] = responses
        records.append(record)
        if rng.random() < 0.5:
            idle = rng.random() < 0.1
            records.append({"kind": "mark", "source": rng.randint(0, 1), "sources": 2,
                            "watermark": t - rng.choice([0, 30, 90]), "max_ts": t,
                            "idle": idle})
    return records


def test_the_indexed_history_judges_exactly_as_the_eager_rules() -> None:
    """Days of activity with a 30-minute horizon: the same flags in the same order with
    the same evidence, and the same history once what is past the horizon is left out."""
    records = activity_stream(seed=5, steps=4_000)
    oracle, state = EagerRiskState(RULES), RiskState(0, SIZE, RULES)
    expected: list[Flag] = []
    flags: list[Flag] = []
    for record in records:
        expected.extend(oracle.apply(record))
        flags.extend(state.apply(record))
    assert flags == expected
    assert {f.rule for f in flags} == {"velocity", "spam_reports", "inmail_response"}
    assert sum(f.rule == "inmail_response" for f in flags) > 20
    oldest = state.inmail_oldest
    assert oldest is not None
    remembered = {
        sender: {b: v for b, v in buckets.items() if b + BUCKET > oldest}
        for sender, buckets in state.history.items()
    }
    assert remembered == oracle.inmail
    assert len(oracle.inmail) > 5


# --- the stage: its records, and restores from them -------------------------------------
class _Recorder:
    """Stands in for the Kafka transaction's writer: what a batch would write."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes | None]] = []
        self.last: int | None = None

    async def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
                  headers: Any = None) -> None:
        self.records.append((topic, key, value))

    def last_offset(self, topic: str, partition: int) -> int | None:
        return self.last


class _Run:
    """One risk partition driven through the stage's own ``process()``, its changelog
    partition kept as every record written (a compacted view on demand)."""

    def __init__(self, tmp_path: Path) -> None:
        self.settings = Settings(
            state_dir=tmp_path, kafka_bootstrap_servers="127.0.0.1:1",  # unused
            window_seconds=SIZE, risk_velocity_messages=RULES.velocity_messages,
            risk_spam_reports=RULES.spam_reports, risk_inmail_min_sent=RULES.inmail_min_sent,
            risk_inmail_min_response_rate=RULES.inmail_min_response_rate,
            risk_inmail_horizon_seconds=HORIZON, risk_inmail_bucket_seconds=BUCKET,
        )
        self.stage = RiskStage(self.settings)
        self.log: list[tuple[int, bytes, bytes | None]] = []  # offset, key, value
        self.input_offsets = itertools.count()
        self.part = self.restore()

    def batch(self, records: list[dict[str, Any]], checkpoint: bool = True) -> list[Flag]:
        messages = [SimpleNamespace(key=None, value=orjson.dumps(r), offset=next(self.input_offsets))
                    for r in records]
        writer = _Recorder()
        tp = TopicPartition(self.settings.activity_topic, 0)
        asyncio.run(self.stage.process(tp, self.part, messages, writer))  # type: ignore[arg-type]
        for topic, key, value in writer.records:
            if topic == self.settings.risk_state_topic:
                assert key is not None
                if value is not None:
                    assert len(value) < 1 << 20  # the broker's default max.message.bytes
                writer.last = len(self.log)
                self.log.append((writer.last, key, value))
        if checkpoint:  # else: a crash between Kafka's commit and the store's
            self.stage.partitions = {0: self.part}
            self.stage.checkpoint(writer)  # type: ignore[arg-type]
        return [Flag(**orjson.loads(value)) for topic, _, value in writer.records
                if topic == self.settings.flagged_topic and value is not None]

    def compacted(self) -> list[tuple[int, bytes, bytes | None]]:
        latest = {key: (offset, key, value) for offset, key, value in self.log}
        return sorted(item for item in latest.values() if item[2] is not None)

    def restore(self, compact: bool = False) -> RiskPartition:
        part = self.stage.new_state(0)
        start = self.stage.restore_from(part, 0, len(self.log))
        for offset, key, value in self.compacted() if compact else self.log:
            if offset >= start:
                message = SimpleNamespace(key=key, value=value, offset=offset)
                self.stage.restore_message(part, message)
        self.stage.restored(part)
        return part

    def restart(self, how: str, compact: bool) -> tuple[RiskPartition, str | None]:
        """Close the live partition and restore it: from its store (checkpoint and
        tail), from no store, or from a garbled one."""
        self.part.store.close()
        path = self.part.store.path
        if how == "empty":
            shutil.rmtree(path)
        elif how == "garbled":
            for name in ("CURRENT", *(f.name for f in path.glob("MANIFEST-*"))):
                (path / name).write_bytes(b"\x00garbage\x00" * 10)
        part = self.restore(compact)
        return part, part.store.rebuilt


def _state(part: RiskPartition) -> dict[str, Any]:
    return orjson.loads(part.state.dumps())  # type: ignore[no-any-return]


def test_restores_from_the_changelog_end_in_the_live_state_and_judge_the_same(
    tmp_path: Path,
) -> None:
    """A long random stream in random batches; at random batch boundaries the partition
    is restored (from its store's checkpoint and the changelog's tail, after a crash
    that left the store behind Kafka, from no store, from a garbled store; reading the
    changelog whole or compacted) into exactly the state the live stage had, and the
    flags of the whole run are the eager rules' own."""
    rng = random.Random(8)
    records = activity_stream(seed=9, steps=3_000)
    oracle = EagerRiskState(RULES)
    expected = [flag for record in records for flag in oracle.apply(record)]
    run = _Run(tmp_path)
    flags: list[Flag] = []
    reasons: list[str | None] = []
    i = 0
    while i < len(records):
        size = rng.choice([1, 3, 10, 40, 120])
        checkpoint = rng.random() > 0.15
        flags.extend(run.batch(records[i:i + size], checkpoint))
        i += size
        if not checkpoint or rng.random() < 0.08:
            how = rng.choice(["tail", "empty", "garbled"])
            live = _state(run.part)
            windows = {s: sorted(keys) for s, keys in run.part.window_keys.items()}
            run.part, reason = run.restart(how, compact=rng.random() < 0.5)
            reasons.append(reason)
            assert _state(run.part) == live, (how, reason)
            assert {s: sorted(k) for s, k in run.part.window_keys.items()} == windows
    assert flags == expected
    assert sum(f.rule == "inmail_response" for f in flags) > 20
    assert {None, "empty"} <= set(reasons)
    assert any(r and r.startswith("unreadable") for r in reasons)
    tombstones = [key for _, key, value in run.log if value is None]
    assert any(key.startswith(HISTORY_PREFIX) for key in tombstones)  # recruiters forgotten
    assert any(key.startswith(b"\x00window:") for key in tombstones)  # windows closed
    # the changelog stays bounded: compacted, it holds exactly the recruiters remembered,
    # each with its value, rebuilds and crashes notwithstanding
    assert _compacted_histories(run) == dict(run.part.state.history.items())
    run.part.store.close()


def _compacted_histories(run: _Run) -> dict[str, Any]:
    return {history_sender(key): decode_history(value) for _, key, value in run.compacted()
            if key.startswith(HISTORY_PREFIX)}


def _mark(watermark: float) -> dict[str, Any]:
    return {"kind": "mark", "source": 0, "sources": 1, "watermark": watermark,
            "max_ts": watermark, "idle": False}


def test_an_earlier_versions_snapshot_is_read_back_then_tombstoned(tmp_path: Path) -> None:
    """Earlier versions wrote the whole state as one ``snapshot`` record per batch. It
    is read back (also after a crash before the first batch: the store is not
    checkpointed past it meanwhile); the first batch writes the state as this version's
    records and tombstones the snapshot; restores after that, with the snapshot still
    in the changelog before its tombstone or compacted away, give the same state; and
    the flags of the whole run are the eager rules' own."""
    records = activity_stream(seed=3, steps=1_500)
    oracle = EagerRiskState(RULES)
    expected = [flag for record in records for flag in oracle.apply(record)]
    before, after = records[:1_000], records[1_000:]
    earlier = RiskState(0, SIZE, RULES)  # its dumps(): the snapshot earlier versions wrote
    run = _Run(tmp_path)
    flags: list[Flag] = []
    for i in range(0, len(before), 50):
        for record in before[i:i + 50]:
            flags.extend(earlier.apply(record))
        run.log.append((len(run.log), SNAPSHOT_KEY, earlier.dumps()))
    snapshot = orjson.loads(earlier.dumps())
    assert snapshot["inmail"] and snapshot["windows"]
    applied: list[bytes] = []
    restore = RiskState.restore
    RiskState.restore = lambda self, raw: (applied.append(raw), restore(self, raw))[1]  # type: ignore[method-assign]
    try:
        run.part, reason = run.restart("tail", compact=False)
    finally:
        RiskState.restore = restore  # type: ignore[method-assign]
    assert reason == "empty" and _state(run.part) == snapshot
    assert applied == [run.log[-1][2]]  # of the 20 snapshots read, the latest alone
    run.part, reason = run.restart("tail", compact=True)  # a crash before the first batch
    assert reason == "no checkpoint" and _state(run.part) == snapshot
    flags.extend(run.batch(after[:1]))
    assert run.log[-1][1:] == (SNAPSHOT_KEY, None)
    live = _state(run.part)
    assert len(live["inmail"]) > 5
    for how, compact in (("empty", False), ("empty", True), ("tail", False)):
        run.part, _ = run.restart(how, compact)
        assert _state(run.part) == live, (how, compact)
    for i in range(1, len(after), 25):
        flags.extend(run.batch(after[i:i + 25]))
    assert flags == expected
    assert sum(key == SNAPSHOT_KEY for _, key, _ in run.log) == len(before) // 50 + 1
    run.part.store.close()


def test_large_batches_are_split_into_records_below_the_brokers_limit(tmp_path: Path) -> None:
    """12,000 recruiters whose ids JSON escapes (six bytes a character) in one window:
    its increments and, once it closes, their histories go in several records, each
    under 1 MiB (``_Run.batch`` checks every one), which restore the same state."""
    run = _Run(tmp_path)
    odd = "\x01" * 40
    names = [f"r{i}{odd}" for i in range(12_000)]
    day = T0 - T0 % BUCKET
    run.batch([{"kind": "activity", "source": 0, "offset": 0,
                "windows": {str(T0): {name: [1, 0, 2] for name in names}},
                "inmail_responses": {str(T0): {name: {str(day - BUCKET): 1, str(day): 1}
                                               for name in names}}}])
    windows = [key for _, key, value in run.log if key.startswith(b"\x00window:") and value]
    assert len(windows) > 3
    run.batch([_mark(T0 + SIZE)])
    histories = [key for _, key, value in run.log if key.startswith(HISTORY_PREFIX) and value]
    assert len(histories) == len(names)  # one record per recruiter
    tombstones = {key for _, key, value in run.log if value is None}
    assert set(windows) <= tombstones  # the closed window's records
    assert run.part.state.history.get(names[7]) == {day - BUCKET: [0, 1], day: [2, 1]}
    live = _state(run.part)
    run.part, reason = run.restart("empty", compact=True)
    assert reason == "empty" and _state(run.part) == live
    run.part.store.close()


def test_a_forgotten_recruiter_is_tombstoned_and_a_rebuild_does_not_bring_it_back(
    tmp_path: Path,
) -> None:
    """A's newest bucket is older than B's. Once A is past the horizon the live stage
    forgets it and tombstones its record in that batch; B's lives on. A rebuild from
    the changelog, whole or compacted, forgets A too."""
    run = _Run(tmp_path)
    b0 = 1_790_000_400  # a bucket's start
    w1, w2, w3 = b0, b0 + 2 * BUCKET, b0 + 4 * BUCKET
    run.batch([{"kind": "activity", "source": 0, "offset": 0,
                "windows": {str(w1): {"A": [1, 0, 1]}}}, _mark(w1 + SIZE)])
    run.batch([{"kind": "activity", "source": 0, "offset": 1,
                "windows": {str(w2): {"B": [1, 0, 1]}},
                "inmail_responses": {str(w2): {"A": {str(b0): 1}}}}, _mark(w2 + SIZE)])
    assert _compacted_histories(run) == {"A": {b0: [1, 1]}, "B": {w2: [1, 0]}}
    run.batch([{"kind": "activity", "source": 0, "offset": 2,
                "windows": {str(w3): {"C": [1, 0, 0]}}}, _mark(w3 + SIZE)])
    history = run.part.state.history
    assert history.get("A") is None and history.get("B") == {w2: [1, 0]}
    assert (history_key("A"), None) in [(key, value) for _, key, value in run.log]
    assert _compacted_histories(run) == {"B": {w2: [1, 0]}}
    live = _state(run.part)
    for how, compact in (("empty", True), ("empty", False), ("garbled", True)):
        run.part, _ = run.restart(how, compact)
        assert run.part.state.history.get("A") is None
        assert _state(run.part) == live
    run.part.store.close()


def test_a_recruiter_active_in_every_window_leaves_one_live_history_record(
    tmp_path: Path,
) -> None:
    """A recruiter sending InMail in every window is written at every close: 200 closes
    over a 30-minute horizon leave one live record (compacted), its latest value, not
    one per close until the horizon passes them; a rebuild reads just that one."""
    run = _Run(tmp_path)
    for n in range(200):
        start = T0 + n * SIZE
        run.batch([{"kind": "activity", "source": 0, "offset": n,
                    "windows": {str(start): {"R": [1, 0, 1]}}}, _mark(start + SIZE)])
    written = [key for _, key, value in run.log if key.startswith(HISTORY_PREFIX) and value]
    assert len(written) == 200
    live = [key for _, key, _ in run.compacted() if key.startswith(HISTORY_PREFIX)]
    assert live == [history_key("R")]
    assert _compacted_histories(run) == {"R": run.part.state.history.get("R")}
    state = _state(run.part)
    run.part, _ = run.restart("empty", compact=True)
    assert _state(run.part) == state
    run.part.store.close()


def test_a_staged_history_value_takes_its_size_not_a_4_kib_buffer(tmp_path: Path) -> None:
    """A window close stages every recruiter's history until the store's commit: each
    staged value must cost about its size (orjson's small results keep a 4 KiB buffer
    each: 250,000 of them held ~1 GiB)."""
    store = PartitionStore(tmp_path / "s", b"x")
    table = StoredInmail(store)
    tracemalloc.start()
    try:
        for i in range(1_000):
            table.put(f"m-{i:07d}", {T0: [3, 1]}, None, T0 + BUCKET)
        per_value = tracemalloc.get_traced_memory()[0] / 1_000
    finally:
        tracemalloc.stop()
    store.close()
    # the value (~15 bytes), its key, an index entry and their dict slots: a few hundred
    assert per_value < 600, f"{per_value:.0f} bytes of memory per staged history"
