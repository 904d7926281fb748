"""Window assignment and watermark closing, with fixed UTC timestamps."""

from __future__ import annotations

import math

import pytest

from streams.windows import (
    GlobalWatermark,
    Idleness,
    PartitionClock,
    SourceMark,
    window_end,
    window_start,
)

T0 = 1_790_000_040.0  # 2026-09-21T13:34:00Z, a window boundary for 60 s windows


@pytest.mark.parametrize(
    ("ts", "start"),
    [(T0, T0), (T0 + 0.001, T0), (T0 + 59.999, T0), (T0 + 60, T0 + 60), (T0 - 0.5, T0 - 60)],
)
def test_window_assignment(ts: float, start: float) -> None:
    assert window_start(ts, 60) == start
    assert window_end(ts, 60) == start + 60


def test_out_of_order_within_lateness_is_not_late() -> None:
    clock = PartitionClock(lateness=30)
    for ts in (T0 + 10, T0 + 70, T0 + 45, T0 + 89):
        # T0+45 arrives after T0+70: 25 s out of order, inside the 30 s lateness
        assert not clock.is_late(ts, 60)
        clock.observe(ts)
    assert clock.watermark == T0 + 59
    assert not clock.is_late(T0 + 1, 60)  # window [T0, T0+60) still open: 60 > 59
    clock.observe(T0 + 91)
    assert clock.is_late(T0 + 1, 60)  # watermark 61 passed the window's end
    assert not clock.is_late(T0 + 60, 60)


def mark(wm: float, max_ts: float | None = None, idle: bool = False) -> SourceMark:
    return SourceMark(wm, wm + 30 if max_ts is None else max_ts, idle)


def test_global_watermark_waits_for_every_partition() -> None:
    gw = GlobalWatermark(window_size=60)
    assert gw.update(0, mark(T0 + 100), source_count=2) == -math.inf
    assert gw.update(1, mark(T0 + 70), source_count=2) == T0 + 70
    assert gw.update(1, mark(T0 + 200), source_count=2) == T0 + 100  # the minimum


def test_global_watermark_is_monotonic() -> None:
    gw = GlobalWatermark(window_size=60)
    gw.update(0, mark(T0 + 100), source_count=1)
    assert gw.update(0, mark(T0 + 50), source_count=1) == T0 + 100


def test_idle_partitions_do_not_hold_back_and_all_idle_closes_the_last_window() -> None:
    gw = GlobalWatermark(window_size=60)
    gw.update(0, mark(T0 + 100), source_count=2)
    gw.update(1, mark(-math.inf, -math.inf, idle=True), source_count=2)  # never saw data
    assert gw.value == T0 + 100
    # traffic stops: the window holding the newest event (T0+130) closes too
    assert gw.update(0, mark(T0 + 100, T0 + 130, idle=True), source_count=2) == T0 + 180


# --- idleness: established against the broker, never inferred from silence -------------
def test_a_partition_is_idle_only_after_being_confirmed_caught_up_for_the_timeout() -> None:
    idle = Idleness(timeout=3.0)
    assert not idle.idle(100.0)  # silence alone proves nothing
    idle.confirmed(100.0, caught_up=True)
    assert not idle.idle(102.9)
    idle.confirmed(102.0, caught_up=True)  # a later confirmation keeps the first's time
    assert idle.idle(103.0)


@pytest.mark.parametrize("interruption", ["input", "records waiting", "no answer"])
def test_input_waiting_records_or_no_fresh_answer_start_the_wait_over(
    interruption: str
) -> None:
    idle = Idleness(timeout=3.0)
    idle.confirmed(100.0, caught_up=True)
    if interruption == "input":
        idle.input()
    elif interruption == "records waiting":
        idle.confirmed(102.0, caught_up=False)
    else:
        idle.unconfirmed(102.0)  # the broker down or stalled: it could not say
    assert not idle.idle(110.0)
    idle.confirmed(110.0, caught_up=True)
    assert not idle.idle(112.9)
    assert idle.idle(113.0)


def test_an_idle_claim_ends_with_the_first_unconfirmed_check() -> None:
    idle = Idleness(timeout=3.0)
    idle.confirmed(100.0, caught_up=True)
    idle.confirmed(103.5, caught_up=True)
    assert idle.idle(104.0)
    idle.unconfirmed(104.5)  # the broker stopped answering
    assert not idle.idle(200.0)
