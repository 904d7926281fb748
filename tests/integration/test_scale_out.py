"""Scale-out: two workers on 4 partitions export disjoint series whose sum is exact."""

from __future__ import annotations

from streams.kafka.io import ensure_topics
from streams.settings import Settings
from tests import reference
from tests.harness import WorkerProcess, wait_until
from tests.pipeline import (
    assert_windows_equal_recount,
    closed_windows,
    encoded,
    last_window_gauges,
    processed_total,
    produce,
    simulated,
    stored_events,
)

WINDOW = 60
STAGES = ("ingest", "aggregate", "risk")


def owned(worker: WorkerProcess) -> dict[str, float]:
    return {
        dict(labels)["stage"]: value for (name, labels), value in worker.scrape().items()
        if name == "messaging_owned_partitions"
    }


def test_two_workers_split_the_partitions_and_sum_exactly(settings: Settings, tmp_path) -> None:
    import asyncio

    assert settings.events_partitions == settings.partials_partitions == 4
    asyncio.run(ensure_topics(settings))
    workers = [
        WorkerProcess(settings, tmp_path / f"worker-{i}.log", worker_id=f"w{i}").start()
        for i in (1, 2)
    ]
    try:
        def split() -> bool:  # every partition of every stage owned, by both workers
            shares = [owned(w) for w in workers]
            return all(
                sum(s.get(stage, 0) for s in shares) == 4 and all(s.get(stage) for s in shares)
                for stage in STAGES
            )

        wait_until(split, 60, "both workers to own partitions of every stage")
        events = simulated(20_000, seed=5)
        produce(settings, encoded(events))
        wait_until(lambda: processed_total(*workers) >= len(events), 120, "all events counted")

        tallies = reference.recount(stored_events(settings, events), WINDOW)
        by_window = closed_windows(settings, tallies, WINDOW)
        assert_windows_equal_recount(by_window, tallies, WINDOW)
        last = max(tallies)
        expected = reference.samples(tallies[last], last + WINDOW)
        summed = last_window_gauges(workers, last + WINDOW)
        assert {k: v for k, v in summed.items() if k in expected} == expected
        assert processed_total(*workers) == len(events)
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0]
