"""The producer's pacing rule: when a chunk of events may go out (pure, no broker)."""

from __future__ import annotations

import math

import pytest

from producers.pacing import Pacing

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z, the wall clock
HOUR = 3600.0


@pytest.mark.parametrize(
    ("pacing", "ts", "elapsed", "now", "wait"),
    [
        # compressed (the default): (ts - start) / speed after pacing began, even when that
        # puts event time ahead of the wall clock
        (Pacing(NOW, 60.0), NOW + 600, 0.0, NOW, 10.0),
        (Pacing(NOW, 60.0), NOW + 600, 4.0, NOW + 4, 6.0),
        (Pacing(NOW, 60.0), NOW + 600, 12.0, NOW + 12, 0.0),  # late: at once
        # then live, history an hour behind the clock: at speed while behind it
        (Pacing(NOW - HOUR, 60.0, True), NOW - 1800, 10.0, NOW + 10, 20.0),
        # ... until event time meets wall time (at 3600 / 59 = 61 s): from then on the
        # wall clock decides
        (Pacing(NOW - HOUR, 60.0, True), NOW + 100, 99.0, NOW + 99, 1.0),
        (Pacing(NOW - HOUR, 60.0, True), NOW + 100, 100.0, NOW + 100, 0.0),
        # a start in the future: nothing goes out before its time
        (Pacing(NOW + 30, 60.0, True), NOW + 30, 0.0, NOW, 30.0),
        # no speed (the warmup, or rate 0): at once, unless then live and ahead of the clock
        (Pacing(NOW - HOUR, None), NOW + 50, 0.0, NOW, 0.0),
        (Pacing(NOW - HOUR, None, True), NOW - 60, 0.0, NOW, 0.0),
        (Pacing(NOW - HOUR, None, True), NOW + 5, 0.0, NOW, 5.0),
        # slower than real time: event time never catches up, the speed always decides
        (Pacing(NOW - 10, 0.5, True), NOW - 8, 0.0, NOW, 4.0),
    ],
)
def test_wait(pacing: Pacing, ts: float, elapsed: float, now: float, wait: float) -> None:
    assert pacing.wait(ts, elapsed=elapsed, now=now) == pytest.approx(wait)


def test_a_chunk_ends_at_the_wall_clock_only_then_live() -> None:
    assert Pacing(NOW - HOUR, 60.0, True).latest_ts(NOW) == NOW
    assert Pacing(NOW - HOUR, 60.0).latest_ts(NOW) == math.inf


@pytest.mark.parametrize(
    ("pacing", "ts", "elapsed", "now", "live"),
    [
        (Pacing(NOW, 60.0), NOW + 600, 0.0, NOW, False),  # compressed never holds back
        (Pacing(NOW - HOUR, 60.0, True), NOW - 1800, 10.0, NOW + 10, False),  # catching up
        (Pacing(NOW - HOUR, 60.0, True), NOW + 100, 99.0, NOW + 99, True),  # caught up
        (Pacing(NOW - HOUR, None, True), NOW - 1, 0.0, NOW, False),
        (Pacing(NOW - HOUR, None, True), NOW + 1, 0.0, NOW, True),
    ],
)
def test_holds_back_once_event_time_has_caught_up(
    pacing: Pacing, ts: float, elapsed: float, now: float, live: bool
) -> None:
    assert pacing.holds_back(ts, elapsed=elapsed, now=now) is live


def test_then_live_never_sends_ahead_of_the_wall_clock() -> None:
    """Replaying an hour at 60x from 0 s: every event goes out no earlier than its ts, and
    no later than at 60x or at its ts, whichever comes later."""
    pacing = Pacing(NOW - HOUR, 60.0, True)
    for ts in (NOW - HOUR + step * 37.0 for step in range(200)):
        sent_at = NOW + pacing.wait(ts, elapsed=0.0, now=NOW)
        assert sent_at >= ts
        assert sent_at == pytest.approx(max(NOW + (ts - (NOW - HOUR)) / 60.0, ts))


def test_speed_must_be_positive() -> None:
    with pytest.raises(ValueError, match="speed"):
        Pacing(NOW, 0.0)
