"""When the producer may send a chunk of events: the pacing rule, as pure arithmetic.

Compressed pacing sends an event ``(ts - start_ts) / speed`` wall seconds after pacing
began. Then-live pacing adds one limit: no event goes out before the wall clock reaches
its ``ts``. While the events are behind the wall clock, the speed governs and event time
catches up; once it has caught up, the wall clock governs and event time runs at 1x.
A chunk of events goes out when its first event is due, and then-live it ends before the
first event past the wall clock.
Prometheus needs the second: the workers write each closed window into its TSDB at the
window's event time, and a sample from the future would block the in-order appends of
everything scraped until the wall clock passed it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Pacing:
    """``speed`` None: as fast as the sink takes them (bounded by the wall clock when
    ``then_live``)."""

    start_ts: float  # the event time at which pacing begins
    speed: float | None
    then_live: bool = False

    def __post_init__(self) -> None:
        if self.speed is not None and self.speed <= 0:
            raise ValueError("speed must be > 0")

    def wait(self, ts: float, *, elapsed: float, now: float) -> float:
        """Wall seconds to wait before an event of time ``ts`` is due, ``elapsed`` wall
        seconds after pacing began, the wall clock at ``now`` (epoch seconds)."""
        return max(0.0, self._compressed_wait(ts, elapsed), self._live_wait(ts, now))

    def latest_ts(self, now: float) -> float:
        """The newest event time that may go out with the wall clock at ``now``: a chunk
        stops before the first event past it."""
        return now if self.then_live else math.inf

    def holds_back(self, ts: float, *, elapsed: float, now: float) -> bool:
        """Whether the wall clock, not the speed, decides when an event of time ``ts``
        goes out: event time has caught up with wall time and runs live."""
        return self._live_wait(ts, now) > max(0.0, self._compressed_wait(ts, elapsed))

    def _compressed_wait(self, ts: float, elapsed: float) -> float:
        return 0.0 if self.speed is None else (ts - self.start_ts) / self.speed - elapsed

    def _live_wait(self, ts: float, now: float) -> float:
        return ts - now if self.then_live else 0.0
