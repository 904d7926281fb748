"""The product's metrics over days on a real broker: a seeded run of two and a half
simulated days, compressed; every closed hour and day equals the independent recount
of the events topic, and the offline replay of the same run."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from producers.profile import SimulationProfile
from producers.simulator import Simulator
from streams.replay import replay
from streams.settings import Settings
from tests import reference
from tests.harness import WorkerProcess
from tests.pipeline import (
    assert_windows_equal_recount,
    closed_windows,
    encoded,
    expected_cohorts,
    produce,
    published_cohorts,
    published_windows,
    rollup_differences,
    samples_of,
    stored_events,
    sum_owners,
)

pytestmark = pytest.mark.integration

# Five-minute windows: hours and days roll up any window that divides them, and 720 of
# them over the run, not 3,600, keep the metrics topic (every window's record from each
# owner, read back whole by the checks) small enough to check in seconds.
WINDOW = 300
DAY0 = 1_789_948_800 + 5 * 3600  # 2026-09-21T05:00:00Z: days 1 and 3 partial, day 2 whole
DAYS = 2.5


def days_of_events(days: float, seed: int) -> list[dict[str, Any]]:
    """About half an event per event-second: 100k events over two and a half days."""
    simulator = Simulator(
        SimulationProfile(), seed=seed, start_ts=DAY0, rate=50, speed=100, members=3000
    )
    end = DAY0 + days * 86_400
    return list(itertools.takewhile(lambda e: e["ts"] < end, simulator.events()))


RESPONSE_HORIZON = 12 * 3600  # InMail: short enough for day 1's cohort to be final


def test_hours_days_and_cohorts_equal_the_recount_and_the_replay(
    settings: Settings, tmp_path
) -> None:
    settings = settings.model_copy(
        update={"inmail_response_horizon_seconds": RESPONSE_HORIZON, "window_seconds": WINDOW}
    )
    events = days_of_events(DAYS, seed=12)
    records = encoded(events)
    produce(settings, records)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        partitions = stored_events(settings, events)
        minutes = reference.recount(partitions, WINDOW)
        assert_windows_equal_recount(closed_windows(settings, minutes, WINDOW, timeout=180),
                                     minutes, WINDOW)
        assert rollup_differences(settings, partitions, minutes) == {}
        hours, days = (published_windows(settings, r) for r in ("hour", "day"))
        assert len(hours) >= 59 and len(days) == 2  # 05:00 day 1 .. 17:00 day 3

        replayed = replay((value for _, value in records), settings)
        by_window = {
            (r["resolution"], r["window_start"]): samples_of(r["samples"])
            for r in replayed.window_records(WINDOW) if r["resolution"] != "minute"
        }
        streamed = {
            (resolution, start): sum_owners(owners)
            for resolution, published in (("hour", hours), ("day", days))
            for start, owners in published.items()
        }
        assert by_window == streamed

        # --- cohorts: every final due by the end, equal to the recount and the replay --
        watermark = max(minutes) + WINDOW
        cohorts = published_cohorts(settings)
        expected = expected_cohorts(partitions, watermark, RESPONSE_HORIZON)
        assert sorted(cohorts) == sorted(expected)
        assert {k: v for k, v in cohorts.items() if v != expected[k]} == {}
        kinds = {(kind, resolution, horizon) for kind, resolution, horizon, _ in cohorts}
        # in two and a half days: finals for 1 h and 24 h (none yet for 7 days), InMail's
        assert kinds == {
            ("reply", r, h) for r in ("hour", "day") for h in ("1h", "24h")
        } | {("inmail", "day", "12h")}
        by_final: dict[Any, list[Any]] = {}
        for final in replayed.cohort_finals:
            key = (final.kind, final.resolution, final.horizon, final.start)
            by_final.setdefault(key, []).append(final.record())
        assert {k: sum_owners(v, timestamps=("start_timestamp",)) for k, v in by_final.items()} \
            == cohorts
    finally:
        assert worker.stop() == 0
