"""A worker stalled (SIGSTOP, children too) past its session, then continued (SIGCONT).

While it is frozen the group gives its partitions to the other worker, which restores
their state and goes on. Frozen at a random point, the worker may have been mid-commit:
when it wakes it finishes what it was doing, and the transaction it had open may still
commit after the other worker took over. Every window and flag must then equal the
independent recount of the events topic, none may close early, and both workers must
live on. The last window's gauges are checked too, but a shortfall there is an open
bug, reported as an expected failure (see the test).

``FAULT_SEED`` replays a run's random points (see tests/faults.py).
"""

from __future__ import annotations

import time

import pytest

from streams.settings import Settings
from tests.faults import FaultRun
from tests.integration.test_reliability import check_last_gauges

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
        tallies = run.assert_exact_and_nothing_early(gauges=False)
        try:
            check_last_gauges(tallies, run.workers)
        except AssertionError as exc:
            pytest.xfail(
                "open bug: after the frozen worker wakes with all input already taken "
                "by the other, the last window's live gauges summed over the workers can "
                "be short (FAULT_SEED=978452771, 952104345, 1017234888 reproduce it); "
                f"FAULT_SEED={run.seed}: {str(exc)[:300]}"
            )
    finally:
        assert run.stop() == [0, 0], f"a worker failed to stop (FAULT_SEED={run.seed})"
