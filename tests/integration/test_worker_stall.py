"""A worker stalled (SIGSTOP, children too) past its session, then continued (SIGCONT).

While it is frozen the group gives its partitions to the other worker, which restores
their state and goes on. Frozen at a random point, the worker may have been mid-commit:
when it wakes it finishes what it was doing, and the transaction it had open may still
commit after the other worker took over. Every window and flag must then equal the
independent recount of the events topic, none may close early, both workers must live
on, and the last window's gauges summed over the workers must equal the recount (the
rebalance after it wakes moves owners after the input has ended: each is restored on
assignment, not at a next record that never comes).

``FAULT_SEED`` replays a run's random points (see tests/faults.py).
"""

from __future__ import annotations

import time

import pytest

from streams.settings import Settings
from tests.faults import FaultRun

pytestmark = pytest.mark.integration


def test_a_worker_stalled_past_its_session_loses_and_doubles_nothing(
    settings: Settings, tmp_path
) -> None:
    run = FaultRun(settings, tmp_path)
    victim = run.workers[run.rng.randrange(len(run.workers))]
    try:
        run.start_and_wait_for_the_fault_point()
        victim.stall()
        try:
            time.sleep(settings.session_timeout_ms / 1000 + run.rng.uniform(2.0, 8.0))
        finally:
            victim.wake()
        run.assert_exact_and_nothing_early()
    finally:
        assert run.stop() == [0, 0], f"a worker failed to stop (FAULT_SEED={run.seed})"
