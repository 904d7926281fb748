"""A closed window, at any resolution, and the ``messaging.metrics`` records: a window's,
and an owner's progress (every window ending at or before it is published)."""

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
            # flagged senders are the risk stage's: they have their own topic. Every
            # series, zeros included: each owner's record then has the same series, and
            # the window's history in Prometheus has each series at every window end.
            "samples": [
                s for s in window_samples(total, self.end, self.resolution, every_series=True)
                if s[0] != FLAGGED_SENDERS
            ],
        }


def progress_record(owner: int, closed_through: float) -> dict[str, Any]:
    """After its windows: this owner has published every window (minute, hour, day)
    ending at or before ``closed_through``. Windows it had no data for have no record:
    this says they are not coming (see :mod:`streams.history.assembly`)."""
    return {"kind": "progress", "owner": owner, "closed_through": closed_through}
