"""Reliability on a real broker: bad input, kill -9, broker restart, rebalance.

After each ordeal every closed window must equal the independent recount of the
events topic exactly, every flag must be published once, and the bad input must all
be in the DLQ with its reason.
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from producers.sinks import KafkaSink
from streams.kafka.io import ensure_topics
from streams.settings import Settings
from tests import reference
from tests.harness import WorkerProcess, read_topic, wait_until
from tests.pipeline import (
    LOW_RISK_THRESHOLDS,
    assert_windows_equal_recount,
    closed_windows,
    encoded,
    expected_flags,
    last_window_gauges,
    processed_total,
    produce,
    simulated,
    split_at_windows,
    stored_events,
)

pytestmark = pytest.mark.integration

WINDOW = 60


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    """Risk thresholds that flag senders of every rule, so that each run's flags are
    compared with the recount across the crashes."""
    return base_settings.model_copy(update=LOW_RISK_THRESHOLDS)


class PacedProducer(threading.Thread):
    """Sends records in chunks at about ``rate`` records/s, so a run spans wall time."""

    def __init__(self, settings: Settings, records: list[tuple[bytes, bytes]], rate: float,
                 acks: int | str = 1):
        super().__init__(daemon=True)
        self.settings, self.records, self.rate, self.acks = settings, records, rate, acks
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - surfaced by join_checked()
            self.error = exc

    async def _run(self) -> None:
        chunk = max(1, int(self.rate / 10))
        async with KafkaSink(self.settings, self.settings.events_topic, acks=self.acks) as sink:
            started = time.monotonic()
            for i in range(0, len(self.records), chunk):
                await sink.write_raw(self.records[i : i + chunk])
                await sink.flush()
                self.sent = i + chunk
                await asyncio.sleep(max(0.0, started + self.sent / self.rate - time.monotonic()))

    def join_checked(self, timeout: float = 120) -> None:
        self.join(timeout)
        assert not self.is_alive(), "producer did not finish"
        if self.error is not None:
            raise self.error


def check_run(settings: Settings, events: list[dict[str, Any]], workers: list[WorkerProcess],
              crashed: bool) -> dict[int, Any]:
    """Windows, flags and the last gauges equal the recount; return the tallies."""
    partitions = stored_events(settings, events)
    tallies = reference.recount(partitions, WINDOW)
    by_window = closed_windows(settings, tallies, WINDOW, timeout=120, crashed=crashed)
    assert_windows_equal_recount(by_window, tallies, WINDOW)
    expected = expected_flags(settings, partitions)

    def flag_keys() -> list[tuple[str, str, int]]:
        flags = [orjson.loads(m.value) for m in read_topic(settings, settings.flagged_topic)]
        return [(f["rule"], f["sender_id"], f["window_start"]) for f in flags]

    # The risk stage reads the ingest's activity on its own: after a rebalance it may
    # still be restoring or catching up when the last window has closed.
    try:
        [keys] = wait_until(lambda: [k] if expected <= set(k := flag_keys()) else None, 60,
                            "every flag the recount expects")
    except TimeoutError:
        keys = flag_keys()
    assert len(keys) == len(set(keys)), "a flag was published twice"
    missing, extra = expected - set(keys), set(keys) - expected
    assert not missing and not extra, f"flags missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}"
    last = max(tallies)
    gauges = last_window_gauges(workers, last + WINDOW)
    expected = reference.samples(tallies[last], last + WINDOW)
    assert {k: v for k, v in gauges.items() if k in expected} == expected
    return tallies


# --- bad input ---------------------------------------------------------------------------
def bad_inputs(
    events: list[dict[str, Any]], count: int, rng: random.Random
) -> list[tuple[bytes, bytes, str]]:
    """``count`` bad messages of every kind, each keyed like the event it spoils (so it
    lands in that conversation's partition) and with the reason it must get."""

    def variant(i: int, e: dict[str, Any]) -> tuple[bytes, str]:
        kind = i % 12
        e = {**e, "event_id": f"bad-{i}"}
        if kind == 0:
            return b"{not json" + str(i).encode(), "malformed_json"
        if kind == 1:
            return orjson.dumps([e]), "not_an_object"
        if kind == 2:
            return orjson.dumps({k: v for k, v in e.items() if k != "type"}), "missing_field"
        if kind == 3:
            return orjson.dumps({**e, "ts": str(e["ts"])}), "wrong_type"
        if kind == 4:
            return orjson.dumps({**e, "platform": "blackberry"}), "invalid_enum"
        if kind == 5:
            return orjson.dumps({**e, "type": "message_deleted"}), "unknown_type"
        if kind == 6:
            return orjson.dumps({**e, "ts": 9e12}), "invalid_timestamp"
        if kind == 7:
            return orjson.dumps({**e, "ts": 1.0}), "invalid_timestamp"
        if kind == 8:
            return orjson.dumps({**e, "schema_version": 7}), "unsupported_schema_version"
        if kind == 9:
            return orjson.dumps({**e, "padding": "x" * 5000}), "too_large"
        if kind == 10:
            return orjson.dumps({**e, "ts": e["ts"] + 10 * 86_400}), "timestamp_too_far_ahead"
        return orjson.dumps(original), "duplicate_event_id"  # an exact repeat

    out = []
    for i in range(count):
        original = rng.choice(events)
        raw, reason = variant(i, original)
        out.append((original["conversation_id"].encode(), raw, reason))
    return out


def test_ten_thousand_bad_messages_are_all_accounted_for(base_settings: Settings, tmp_path) -> None:
    settings = base_settings.model_copy(update={"max_event_bytes": 4096})
    events = simulated(15_000, seed=21)
    rng = random.Random(4)
    bad = bad_inputs(events[:3000], 10_000, rng)
    records = encoded(events)
    # spread the bad ones through the run, after the events they copy or refer to
    for key, raw, _ in bad:
        records.insert(rng.randrange(3000, len(records)), (key, raw))
    produce(settings, records)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        check_run(settings, events, [worker], crashed=False)
        dlq = read_topic(settings, settings.dlq_topic)
        reasons = Counter(dict(m.headers)["dlq.reason"].decode() for m in dlq)
        assert reasons == Counter(reason for _, _, reason in bad)
        invalid = {
            dict(labels)["reason"]: v for (name, labels), v in worker.scrape().items()
            if name == "messaging_invalid_events_total" and v
        }
        assert invalid == dict(reasons)
    finally:
        assert worker.stop() == 0


# --- kill -9 -----------------------------------------------------------------------------
@pytest.mark.parametrize("ingest_processes", [0, 2], ids=["in-process", "two-children"])
def test_kill_minus_9_at_random_points_loses_and_doubles_nothing(
    settings: Settings, tmp_path, ingest_processes: int
) -> None:
    """With child ingest processes, the kill takes them down too (they die with the
    worker) and the restarted worker's children fence the old ones' transactions.

    The input repeats some events, thousands of events after the first copy and within
    the dedup horizon: the repeats are confirmed against the ids in the store's records
    (batches long committed), before and after each restore."""
    settings = settings.model_copy(update={"ingest_processes": ingest_processes})
    asyncio.run(ensure_topics(settings))
    events = simulated(60_000, seed=33)
    records = with_repeats(encoded(events), random.Random(ingest_processes))
    producer = PacedProducer(settings, records, rate=3000)
    rng = random.Random(9)
    worker = WorkerProcess(settings, tmp_path / "worker-0.log").start()
    producer.start()
    kills = []
    try:
        for crash in range(1, 4):
            # a random point of this incarnation's work, mid-stream
            point = rng.randrange(500, 6000)
            wait_until(lambda w=worker, p=point: processed_total(w) >= p, 60,
                       "progress before a kill", interval=0.05)
            kills.append((producer.sent, processed_total(worker)))
            if ingest_processes:
                assert len(worker.descendants()) >= ingest_processes
            worker.kill()  # SIGKILL: no flush, no commit, no goodbye; children go too
            worker = WorkerProcess(settings, tmp_path / f"worker-{crash}.log").start()
        producer.join_checked()
        assert kills[0][0] < len(events) and kills[1][0] < len(events), kills  # mid-run
        check_run(settings, events, [worker], crashed=True)
        dlq = read_topic(settings, settings.dlq_topic)
        reasons = Counter(dict(m.headers)["dlq.reason"].decode() for m in dlq)
        assert reasons == {"duplicate_event_id": len(records) - len(events)}
    finally:
        assert worker.stop() == 0


def with_repeats(
    records: list[tuple[bytes, bytes]], rng: random.Random, share: float = 0.02
) -> list[tuple[bytes, bytes]]:
    """``records`` with about ``share`` of them sent again, each 2,000 to 20,000 records
    after the first copy (at 60 events of event time a second, 2 to 20 minutes later:
    within the hour's dedup horizon, past a few hundred ids per partition)."""
    out = list(records)
    for at in sorted(rng.sample(range(20_000, len(records)), int(share * len(records))),
                     reverse=True):
        out.insert(at, records[at - rng.randrange(2_000, 20_000)])
    return out


# --- the ingest's local store: kept, missing, corrupt --------------------------------------
def _restored_records(log: Path, stage: str = "ingest") -> list[int]:
    return [int(m) for m in re.findall(rf"{stage} restored partitions \[[\d, ]*\] from (\d+) "
                                       r"changelog records", log.read_text())]


@pytest.mark.parametrize("store", ["kept", "missing", "corrupt"])
def test_restart_on_the_local_store_or_without_it_stays_exact(
    settings: Settings, tmp_path, store: str
) -> None:
    """kill -9, then a restart on the same disk (only the changelog's tail is read back),
    with the stores gone (a new machine), or with their files garbled: each restart ends
    exact, and the last two say they rebuilt every store, the ingest's and the risk
    stage's, from the whole changelog."""
    asyncio.run(ensure_topics(settings))
    events = simulated(30_000, seed=66)
    first, second = map(encoded, split_at_windows(events, 2, WINDOW))
    stages = {  # stage: (its changelog, its partitions)
        "ingest": (settings.ingest_state_topic, settings.events_partitions),
        "risk": (settings.risk_state_topic, settings.activity_partitions),
    }
    worker = WorkerProcess(settings, tmp_path / "worker-0.log").start()
    try:
        produce(settings, first)
        wait_until(lambda: processed_total(worker) >= len(first), 60, "the first half")
        worker.kill()
        at_kill = {stage: len(read_topic(settings, topic)) for stage, (topic, _) in stages.items()}
        for stage, (_, partitions) in stages.items():
            stores = sorted((tmp_path / "state").glob(f"*/*/{stage}/*"))
            assert len(stores) == partitions, stores
            for path in stores:
                if store == "missing":
                    shutil.rmtree(path)
                elif store == "corrupt":
                    for name in ("CURRENT", *(f.name for f in path.glob("MANIFEST-*"))):
                        (path / name).write_bytes(b"\x00garbled\x00" * 8)
        log = tmp_path / "worker-1.log"
        worker = WorkerProcess(settings, log).start()
        produce(settings, second)
        check_run(settings, events, [worker], crashed=True)
        text = log.read_text()
        for stage, (topic, partitions) in stages.items():
            state_records = len(read_topic(settings, topic))
            restored = sum(_restored_records(log, stage))
            rebuilt = text.count(f"{stage} rebuilds its local state")
            if store == "kept":
                assert rebuilt == 0, stage
                assert restored < state_records / 10, (stage, restored, state_records)  # the tail
            else:
                assert rebuilt == partitions, stage
                assert restored >= at_kill[stage], (stage, restored, at_kill)  # the whole changelog
                reason = "empty" if store == "missing" else "unreadable"
                assert f"{stage} rebuilds its local state" in text and f": {reason}" in text
    finally:
        assert worker.stop() == 0


async def _rewind_group(settings: Settings, group: str, topic: str, partitions: int) -> None:
    """Commit offset 0 for every partition, as a stale OffsetFetch answer would say, once
    the group's members (static: they do not leave) are gone."""
    consumer = AIOKafkaConsumer(group_id=group, enable_auto_commit=False,
                                **settings.kafka_client_options())
    await consumer.start()
    try:
        offsets = {TopicPartition(topic, p): 0 for p in range(partitions)}
        consumer.assign(list(offsets))  # manual: commits as a non-member (generation -1)
        deadline = time.monotonic() + 60
        while True:
            try:
                await consumer.commit(offsets)
                return
            except KafkaError:  # the stopped worker's static member: until its session ends
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)
    finally:
        await consumer.stop()


def test_committed_offsets_behind_the_state_do_not_replay_applied_input(
    settings: Settings, tmp_path
) -> None:
    """A restarted stage's input resumes where its restored state says, not where the
    group's committed offsets do: aiokafka cannot ask for stable offsets, and after a
    broker restart it may be told older ones (CI once saw the risk stage apply a batch
    twice so). Here both stages' groups are rewound to 0 while the worker is down: the
    restart must neither count the first half again nor reject it as repeated ids."""
    asyncio.run(ensure_topics(settings))
    events = simulated(20_000, seed=77)
    first, second = map(encoded, split_at_windows(events, 2, WINDOW))
    worker = WorkerProcess(settings, tmp_path / "worker-0.log").start()
    try:
        produce(settings, first)
        wait_until(lambda: processed_total(worker) >= len(first), 60, "the first half")
    finally:
        assert worker.stop() == 0
    for stage, topic, partitions in (
        ("ingest", settings.events_topic, settings.events_partitions),
        ("risk", settings.activity_topic, settings.activity_partitions),
    ):
        asyncio.run(_rewind_group(settings, f"{settings.app_id}-{stage}", topic, partitions))
    worker = WorkerProcess(settings, tmp_path / "worker-1.log").start()
    try:
        produce(settings, second)
        check_run(settings, events, [worker], crashed=True)
        scraped = worker.scrape("messaging_invalid_events_total")
        assert sum(scraped.values()) == 0, scraped  # no id taken for a repeat
        assert read_topic(settings, settings.dlq_topic) == []
    finally:
        assert worker.stop() == 0


# --- broker restart ----------------------------------------------------------------------
def test_broker_restart_mid_run(kafka_broker, settings: Settings, tmp_path) -> None:
    if kafka_broker is None:
        pytest.skip("KAFKA_BOOTSTRAP_SERVERS points at an external broker: not ours to restart")
    asyncio.run(ensure_topics(settings))
    events = simulated(40_000, seed=44)
    first, second = map(encoded, split_at_windows(events, 2, WINDOW))
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        produce(settings, first)
        time.sleep(1.0)
        kafka_broker.restart()
        produce(settings, second)
        check_run(settings, events, [worker], crashed=True)
    finally:
        assert worker.stop() == 0


# --- rebalance 1 -> 2 -> 1 -----------------------------------------------------------------
def test_rebalance_one_two_one(settings: Settings, tmp_path) -> None:
    asyncio.run(ensure_topics(settings))
    events = simulated(45_000, seed=55)
    thirds = [encoded(part) for part in split_at_windows(events, 3, WINDOW)]
    first = WorkerProcess(settings, tmp_path / "worker-1.log", worker_id="w1").start()
    try:
        produce(settings, thirds[0])
        second = WorkerProcess(settings, tmp_path / "worker-2.log", worker_id="w2").start()
        try:
            produce(settings, thirds[1])
            # long enough for the idle timeout to close the windows of the first parts
            time.sleep(settings.idle_timeout_seconds + 2.0)
        finally:
            assert second.stop() == 0  # graceful: it commits and leaves the group
        produce(settings, thirds[2])
        check_run(settings, events, [first], crashed=False)
    finally:
        assert first.stop() == 0
