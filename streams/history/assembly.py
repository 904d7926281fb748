"""Closed windows from ``messaging.metrics``, assembled across their owners: pure.

Every aggregate owner (a partials partition) publishes a record for each window it
closes, at every resolution (minute, hour, day), with that owner's samples only; an owner
that had no data for a window publishes nothing for it. So a window is whole not when
some count of records has arrived, but when every owner has said it is past it: after
its windows, each owner publishes a ``progress`` record, "every window ending at or
before ``closed_through`` has been published". A window is complete once its end is at
or below every owner's progress; its value is then the sum of the records that came.

``messaging.metrics`` is one ordered log (partition 0), so an owner's windows are always
read before its progress that covers them.

Repeats: an owner that crashes between publishing and saving its state publishes the same
windows again (identical records). A repeat of a window not yet complete replaces its
owner's record; a repeat of a window already written (its end at or below
``written_through``) is ignored. ``written_through`` travels with the committed offset
(:meth:`Assembly.commit_point`, :meth:`Assembly.metadata`), so a restart reads from the
first record it still needs and knows which windows are behind it. A window is written
once, whole: never again with another value (Prometheus would not always refuse it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.catalogue import RESOLUTIONS, WINDOW_END, named
from streams.history.remote_write import Series
from streams.windows import finite_or_none, or_minus_inf

EVENT_TIME_PREFIX = "messaging_eventtime_"
# the sample's timestamp says where the window ends: no series for it
_WINDOW_ENDS = frozenset(named(WINDOW_END, resolution) for resolution in RESOLUTIONS)

Labels = tuple[tuple[str, str], ...]
WindowKey = tuple[str, int, int]  # resolution, start, end


def event_time_name(name: str) -> str:
    """``messaging_messages_sent`` -> ``messaging_eventtime_messages_sent``: one sample per
    window at its end, never the live gauge of the last closed window."""
    return name.replace("messaging_", EVENT_TIME_PREFIX, 1)


@dataclass(frozen=True, slots=True)
class AssembledWindow:
    """One window, all owners summed: what Prometheus gets, at the window's end."""

    resolution: str
    start: int
    end: int
    owners: tuple[int, ...]  # the owners that had data in it
    values: dict[tuple[str, Labels], float]

    def series(self) -> list[Series]:
        at = self.end * 1000
        return [Series(event_time_name(name), dict(labels), value, at)
                for (name, labels), value in self.values.items()]


def summed(records: dict[int, list[list[Any]]]) -> dict[tuple[str, Labels], float]:
    """The owners' samples added series by series (every owner renders every series of
    the catalogue, zeros included, so each series is in every window)."""
    values: dict[tuple[str, Labels], float] = {}
    for samples in records.values():
        for name, labels, value in samples:
            if name in _WINDOW_ENDS:
                continue
            key = (name, tuple(sorted(labels.items())))
            values[key] = values.get(key, 0) + value
    return values


@dataclass(slots=True)
class Assembly:
    """One ``messaging.metrics`` partition's windows on their way to Prometheus."""

    owners: int  # aggregate owners: the partials topic's partitions
    written_through: float = -math.inf  # every window ending at or before it is written
    progress: dict[int, float] = field(default_factory=dict)  # owner -> closed through
    progress_offsets: dict[int, int] = field(default_factory=dict)  # owner -> its latest
    pending: dict[WindowKey, dict[int, list[list[Any]]]] = field(default_factory=dict)
    first_offsets: dict[WindowKey, int] = field(default_factory=dict)
    repeats: int = 0  # window records of windows already written
    malformed: int = 0  # records that are not what an owner publishes: skipped

    def add(self, record: Any, offset: int) -> None:
        """One record of the partition, in offset order (cohort records are not windows:
        Prometheus has them from ``/metrics``)."""
        try:
            self._add(record, offset)
        except (KeyError, TypeError, AttributeError, ValueError):
            self.malformed += 1

    def _add(self, record: dict[str, Any], offset: int) -> None:
        kind = record.get("kind")
        if kind == "progress":
            owner = record["owner"]
            self.progress[owner] = max(self.progress.get(owner, -math.inf),
                                       record["closed_through"])
            self.progress_offsets[owner] = offset
        elif kind == "window":
            if record["window_end"] <= self.written_through:
                self.repeats += 1
                return
            key = (record["resolution"], record["window_start"], record["window_end"])
            self.pending.setdefault(key, {})[record["owner"]] = record["samples"]
            self.first_offsets[key] = min(offset, self.first_offsets.get(key, offset))

    @property
    def closed_through(self) -> float:
        """Every owner has published every window ending at or before this."""
        if any(owner not in self.progress for owner in range(self.owners)):
            return -math.inf
        return min(self.progress[owner] for owner in range(self.owners))

    def complete(self) -> tuple[list[AssembledWindow], float]:
        """The windows every owner is past, oldest first, and the point they reach.
        They stay pending until :meth:`written` says Prometheus has them."""
        through = self.closed_through
        keys = sorted((k for k in self.pending if k[2] <= through),
                      key=lambda k: (k[2], RESOLUTIONS.index(k[0])))
        windows = [AssembledWindow(*key, tuple(sorted(self.pending[key])),
                                   summed(self.pending[key]))
                   for key in keys]
        return windows, through

    def written(self, windows: list[AssembledWindow], through: float) -> None:
        for window in windows:
            key = (window.resolution, window.start, window.end)
            self.pending.pop(key, None)
            self.first_offsets.pop(key, None)
        self.written_through = max(self.written_through, through)

    def metadata(self) -> str:
        """What the committed offset carries: the event time written through, and each
        owner's progress (a restart must not wait for an owner to pass again what it
        had passed: an owner restored from an older state re-sends a lower one)."""
        return orjson.dumps({
            "written_through": finite_or_none(self.written_through),
            "progress": {str(owner): value for owner, value in self.progress.items()},
        }).decode()

    @classmethod
    def restored(cls, owners: int, metadata: str | None) -> Assembly:
        """The assembly a restart begins with, from the committed offset's metadata
        (none, or unreadable: nothing written, nothing known)."""
        try:
            data = orjson.loads(metadata or "{}")
            written = data.get("written_through")
            progress = {int(owner): float(value)
                        for owner, value in data.get("progress", {}).items()}
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            return cls(owners)
        return cls(owners, or_minus_inf(written), progress)

    def commit_point(self, position: int) -> int:
        """Where a restart must read from (with ``written_through`` beside it): the
        first record of every window not written yet, and every owner's latest
        progress; ``position`` (the next offset) when nothing before it is needed."""
        return min([position, *self.first_offsets.values(), *self.progress_offsets.values()])
