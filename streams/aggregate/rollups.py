"""Hours and days, rolled up from closed minute windows: pure, exact, replayable.

A minute window that closes is added into the open hour and day that hold it: its
counters by integer addition (the latency histogram included), its distinct-sender
sketch by CPC union (never its estimate: distinct counts do not add). An hour or day
closes on the same event-time watermark as the minutes, once its end is at or below it,
and never on the "all sources idle" rule that closes the newest minute when traffic
stops: a pause of ``IDLE_TIMEOUT_SECONDS`` must not close a day early.

Memory is bounded: one open hour and one open day per segment, one sketch each, and,
for the trailing actives (7 and 28 days), the sketches of the last 28 closed days. Those
change once a day, so they travel in a record of their own (:meth:`history_json`), not
in the owner state that is rewritten with every partial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from streams import distinct
from streams.aggregate.closed import ClosedWindow
from streams.catalogue import ROLLUP_SECONDS, TRAILING_ACTIVE
from streams.partials import (
    ACTIVE_SENDERS,
    GLOBAL_SEGMENT,
    Partial,
    decode,
    encode,
    merge_into,
    merged,
)

DAY = ROLLUP_SECONDS["day"]
HISTORY_DAYS = max(days for _, days in TRAILING_ACTIVE)
RECENT_ROLLUPS = 2  # closed hours and days kept for /metrics (a scrape may trail a close)


def _per_resolution() -> dict[str, dict[int, Any]]:
    return {resolution: {} for resolution in ROLLUP_SECONDS}


@dataclass(slots=True)
class Rollups:
    open: dict[str, dict[int, dict[str, Partial]]] = field(default_factory=_per_resolution)
    senders: dict[str, dict[int, bytes]] = field(default_factory=_per_resolution)
    recent: dict[str, dict[int, Partial]] = field(default_factory=_per_resolution)
    days: dict[int, bytes] = field(default_factory=dict)  # closed day -> its sender sketch

    def add(self, start: int, segments: dict[str, Partial], sketch: bytes | None) -> None:
        """One closed minute window (its segments, its merged sender sketch)."""
        counts = {
            segment: {k: v for k, v in partial.items() if k[0] != ACTIVE_SENDERS}
            for segment, partial in segments.items()
        }
        for resolution, size in ROLLUP_SECONDS.items():
            rollup_start = math.floor(start / size) * size
            window = self.open[resolution].setdefault(rollup_start, {})
            for segment, partial in counts.items():
                merge_into(window.setdefault(segment, {}), partial)
            if sketch is not None:
                previous = self.senders[resolution].get(rollup_start)
                self.senders[resolution][rollup_start] = distinct.union(
                    [sketch] if previous is None else [previous, sketch]
                )

    def close(self, owner: int, watermark: float) -> list[ClosedWindow]:
        """Every hour and day whose end the watermark has passed, oldest first."""
        closed = []
        for resolution, size in ROLLUP_SECONDS.items():
            for start in sorted(s for s in self.open[resolution] if s + size <= watermark):
                segments = self.open[resolution].pop(start)
                sketch = self.senders[resolution].pop(start, None)
                if sketch is not None:
                    everyone = segments.setdefault(GLOBAL_SEGMENT, {})
                    everyone[(ACTIVE_SENDERS,)] = distinct.estimate(sketch)
                if resolution == "day" and sketch is not None:
                    self._remember_day(start, sketch, segments)
                closed.append(ClosedWindow(owner, start, start + size, segments, resolution))
                recent = self.recent[resolution]
                recent[start] = merged(segments.values())
                for old in sorted(recent)[:-RECENT_ROLLUPS]:
                    del recent[old]
        return closed

    def _remember_day(self, start: int, sketch: bytes, segments: dict[str, Partial]) -> None:
        """Keep the day's sketch, forget the oldest, and add the trailing actives."""
        self.days[start] = sketch
        for old in [d for d in self.days if d <= start - HISTORY_DAYS * DAY]:
            del self.days[old]
        end = start + DAY
        everyone = segments[GLOBAL_SEGMENT]
        for _, days in TRAILING_ACTIVE:
            trailing = [raw for d, raw in self.days.items() if d >= end - days * DAY]
            everyone[(ACTIVE_SENDERS, f"{days}d")] = distinct.estimate(distinct.union(trailing))

    # --- persistence ----------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "open": {
                resolution: {
                    str(s): {seg: encode(p) for seg, p in segments.items()}
                    for s, segments in windows.items()
                }
                for resolution, windows in self.open.items()
            },
            "senders": {
                resolution: {str(s): distinct.to_text(raw) for s, raw in sketches.items()}
                for resolution, sketches in self.senders.items()
            },
            "recent": {
                resolution: {str(s): encode(p) for s, p in windows.items()}
                for resolution, windows in self.recent.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rollups:
        return cls(
            open={
                resolution: {
                    int(s): {seg: decode(p) for seg, p in segments.items()}
                    for s, segments in windows.items()
                }
                for resolution, windows in data["open"].items()
            },
            senders={
                resolution: {int(s): distinct.from_text(t) for s, t in sketches.items()}
                for resolution, sketches in data["senders"].items()
            },
            recent={
                resolution: {int(s): decode(p) for s, p in windows.items()}
                for resolution, windows in data["recent"].items()
            },
        )

    def history_json(self) -> dict[str, str]:
        return {str(day): distinct.to_text(raw) for day, raw in sorted(self.days.items())}

    def restore_history(self, data: dict[str, str]) -> None:
        self.days = {int(day): distinct.from_text(text) for day, text in data.items()}

