"""A closed window, at any resolution, and the ``messaging.metrics`` record of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams.catalogue import FLAGGED_SENDERS, window_samples
from streams.partials import Partial, merged


@dataclass(frozen=True, slots=True)
class ClosedWindow:
    owner: int
    start: int
    end: int
    segments: dict[str, Partial]
    resolution: str = "minute"  # or "hour", "day": rollups of the minute windows

    @property
    def key(self) -> bytes:
        """Every owner's record of one window shares this key (and so a partition)."""
        if self.resolution == "minute":
            return str(self.start).encode()
        return f"{self.resolution}:{self.start}".encode()

    def record(self) -> dict[str, Any]:
        """The ``messaging.metrics`` record: all segments and all metrics of the window."""
        total = merged(self.segments.values())
        return {
            "kind": "window",
            "owner": self.owner,
            "resolution": self.resolution,
            "window_start": self.start,
            "window_end": self.end,
            "segments": sorted(self.segments),
            # flagged senders are the risk stage's: they have their own topic
            "samples": [
                s for s in window_samples(total, self.end, self.resolution)
                if s[0] != FLAGGED_SENDERS
            ],
        }
