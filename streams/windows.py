"""Event-time tumbling windows and the watermark that closes them.

A window ``[start, start + size)`` is identified by its integer start second. The
watermark of one input partition is ``max event ts seen - allowed lateness``; a window
is closed for that partition once its end is at or below the watermark. The global
watermark (what the aggregator closes windows on) is the minimum over all input
partitions that are not idle; when every partition is idle it moves to the end of the
window holding the newest event, so the last windows close when traffic stops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


def window_start(ts: float, size: int) -> int:
    return math.floor(ts / size) * size


def window_end(ts: float, size: int) -> int:
    return window_start(ts, size) + size


@dataclass(slots=True)
class PartitionClock:
    """Event-time progress of one input partition, as the ingest sees it."""

    lateness: float
    max_ts: float = -math.inf
    idle: bool = False

    @property
    def watermark(self) -> float:
        return self.max_ts - self.lateness

    def is_late(self, ts: float, size: int) -> bool:
        """An event whose window already closed for this partition."""
        return window_end(ts, size) <= self.watermark

    def observe(self, ts: float) -> None:
        self.max_ts = max(self.max_ts, ts)
        self.idle = False


@dataclass(slots=True)
class Idleness:
    """Whether one input partition may stop holding the watermark back.

    Idleness is a property of the input, not of our reads: a partition is idle once the
    broker has confirmed, continuously for ``timeout`` wall seconds, that nothing is
    left to read (the position at a *fresh* end offset). Any input, any confirmation
    that finds records waiting and any failed confirmation (broker down, stalled,
    unreachable, leader moving) starts the wait over, so a broker's silence is never
    taken for the input's: while its data cannot be read, a partition holds the
    watermark where it is. An idle partition stays idle only while fresh answers keep
    confirming it, so an outage also ends an idle claim. Pure: the stage reads what the
    broker said and reports here.
    """

    timeout: float
    caught_up_since: float | None = None  # wall (monotonic) time of the first confirmation

    def input(self) -> None:
        self.caught_up_since = None

    def confirmed(self, at: float, caught_up: bool) -> None:
        """The broker said, at ``at``, that the partition was caught up or not."""
        if not caught_up:
            self.caught_up_since = None
        elif self.caught_up_since is None:
            self.caught_up_since = at

    def unconfirmed(self, now: float) -> None:
        """No fresh answer from the broker (down, stalled, unreachable, an error)."""
        self.caught_up_since = None

    def idle(self, now: float) -> bool:
        since = self.caught_up_since
        return since is not None and now - since >= self.timeout



@dataclass(frozen=True, slots=True)
class SourceMark:
    """What one input partition last reported: its watermark, newest ts and idleness."""

    watermark: float
    max_ts: float
    idle: bool

    def to_json(self) -> list[Any]:
        return [finite_or_none(self.watermark), finite_or_none(self.max_ts), self.idle]

    @classmethod
    def from_json(cls, data: list[Any]) -> SourceMark:
        watermark, max_ts, idle = data
        return cls(or_minus_inf(watermark), or_minus_inf(max_ts), idle)


def finite_or_none(value: float) -> float | None:
    """JSON has no infinity: "nothing seen yet" travels as null."""
    return value if math.isfinite(value) else None


def or_minus_inf(value: float | None) -> float:
    return -math.inf if value is None else value


@dataclass(slots=True)
class GlobalWatermark:
    """Merges the marks of all input partitions into the watermark that closes windows."""

    window_size: int
    source_count: int = 0
    marks: dict[int, SourceMark] = field(default_factory=dict)
    value: float = -math.inf  # monotonic: windows with end <= value are closed

    def update(self, source: int, mark: SourceMark, source_count: int) -> float:
        self.source_count = max(self.source_count, source_count)
        self.marks[source] = mark
        candidate = self._compute()
        self.value = max(self.value, candidate)
        return self.value

    def apply_mark(self, record: dict[str, Any]) -> float:
        """Apply a ``{"kind": "mark", ...}`` record from the ingest."""
        mark = SourceMark(
            or_minus_inf(record["watermark"]), or_minus_inf(record["max_ts"]), record["idle"]
        )
        return self.update(record["source"], mark, record["sources"])

    @property
    def last_closed_start(self) -> int | None:
        """Start of the newest window whose end is at or below the watermark."""
        return self.last_closed(self.window_size)

    def last_closed(self, size: int) -> int | None:
        """Start of the newest window of ``size`` seconds (a minute, an hour, a day)
        whose end is at or below the watermark."""
        if self.value == -math.inf:
            return None
        return math.floor(self.value / size) * size - size

    def to_json(self) -> dict[str, Any]:
        return {
            "sources": self.source_count,
            "marks": {str(k): m.to_json() for k, m in self.marks.items()},
            "value": finite_or_none(self.value),
        }

    @classmethod
    def from_json(cls, window_size: int, data: dict[str, Any]) -> GlobalWatermark:
        return cls(
            window_size, data["sources"],
            {int(k): SourceMark.from_json(m) for k, m in data["marks"].items()},
            or_minus_inf(data["value"]),
        )

    def _compute(self) -> float:
        if self.source_count == 0 or len(self.marks) < self.source_count:
            return -math.inf  # some partition has not reported yet: hold back
        active = [m.watermark for m in self.marks.values() if not m.idle]
        if active:
            return min(active)
        newest = max(m.max_ts for m in self.marks.values())
        return window_end(newest, self.window_size) if newest > -math.inf else -math.inf
