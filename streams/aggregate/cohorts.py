"""Cohorts: of the conversations started in an hour or a day, what share got a first
reply within 1 h, 24 h and 7 days; of the InMails sent on a day, what share got a
response (a reply, or accepted or declined) within the InMail horizon (30 days).

Pure state and rules. The ingest counts a conversation's first reply in the cohort of
its start (hourly reply cohorts; InMail cohorts, sends too, by send day), whenever the
reply comes; the owner adds those counts up here, and takes a reply cohort's size (its
conversations started) from the hour itself once it has closed. A cohort is *provisional* while
it can still change for a horizon, and *final* for that horizon once the watermark
passes the cohort's end plus the horizon: every reply inside the horizon came before
then (its window closed no later than that), so the final value is exact, is published
once, and never changes. Replies beyond a horizon do not count for it: a horizon's
values are the latency buckets up to its bound.

Bounded: an hourly cohort is kept until its day is final for 7 days, an InMail day until
it is final for the InMail horizon; the last few finals of each kind stay for
``/metrics``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from streams.partials import (
    COHORT_LATENCY_SUM_MS,
    COHORT_REPLY,
    COHORT_STARTED,
    HORIZON_BUCKET,
    REPLY_HORIZONS,
    STARTED,
    Partial,
    decode,
    encode,
    merge_into,
    merged,
)

HOUR, DAY = 3600, 86_400
RECENT_FINALS = 6  # owners' watermarks differ a little: enough for the slowest
LONGEST_REPLY_HORIZON = max(REPLY_HORIZONS.values())


@dataclass(frozen=True, slots=True)
class CohortFinal:
    """A cohort final for one horizon: the ``messaging.metrics`` record of one owner."""

    owner: int
    kind: str  # "reply" (hour or day cohorts) or "inmail" (day cohorts)
    resolution: str  # "hour" or "day"
    horizon: str  # "1h", "24h", "7d" (replies) or "30d" (InMail)
    start: int
    end: int
    counts: Partial

    @property
    def key(self) -> bytes:
        return f"cohort:{self.kind}:{self.resolution}:{self.horizon}:{self.start}".encode()

    def record(self) -> dict[str, Any]:
        from streams.catalogue import cohort_samples  # the catalogue renders every gauge

        return {
            "kind": "cohort", "cohort": self.kind, "owner": self.owner,
            "resolution": self.resolution, "horizon": self.horizon,
            "cohort_start": self.start, "cohort_end": self.end,
            "samples": cohort_samples(self.kind, "final", self.resolution, self.horizon,
                                      self.counts, self.start),
        }


def within(counts: Partial, horizon: str) -> Partial:
    """A reply cohort's counts for one horizon: starts, and replies up to its bound."""
    limit = HORIZON_BUCKET[horizon]
    return {
        key: value for key, value in counts.items()
        if key[0] not in (COHORT_REPLY, COHORT_LATENCY_SUM_MS) or int(key[2]) <= limit
    }


def horizon_name(seconds: float) -> str:
    days = seconds / DAY
    return f"{days:g}d" if days >= 1 else f"{seconds / HOUR:g}h"


@dataclass(slots=True)
class Cohorts:
    inmail_horizon: float = 30 * DAY
    hours: dict[int, Partial] = field(default_factory=dict)  # reply cohorts by start hour
    inmail_days: dict[int, Partial] = field(default_factory=dict)  # InMail cohorts by day
    finals: dict[str, dict[int, Partial]] = field(default_factory=dict)  # "kind/res/h"

    @property
    def inmail_name(self) -> str:
        return horizon_name(self.inmail_horizon)

    def add_started(self, hour: int, segments: dict[str, Partial]) -> None:
        """A closed hour's conversations started, by channel: its cohort's size. (The
        ingest counts only the replies; the starts are the hour's own count.)"""
        started: Partial = {}
        for partial in segments.values():
            for key, value in partial.items():
                if key[0] == STARTED:
                    channel_key = (COHORT_STARTED, key[2])
                    started[channel_key] = started.get(channel_key, 0) + value
        if started:
            merge_into(self.hours.setdefault(hour, {}), started)

    def add(self, cohorts: dict[str, dict[str, dict[str, int]]]) -> None:
        """A partial's cohort counts: ``{"hour": {start: counts}, "day": {...}}``."""
        for resolution, target in (("hour", self.hours), ("day", self.inmail_days)):
            for start_text, data in cohorts.get(resolution, {}).items():
                merge_into(target.setdefault(int(start_text), {}), decode(data))

    def close(self, owner: int, before: float, after: float) -> list[CohortFinal]:
        """The finals whose moment (cohort end + horizon) the watermark passed in moving
        from ``before`` to ``after``; then forget what no horizon needs any more."""
        out = []
        days = sorted({math.floor(s / DAY) * DAY for s in self.hours})
        for horizon, seconds in REPLY_HORIZONS.items():
            for start in sorted(self.hours):
                if before < start + HOUR + seconds <= after:
                    out.append(self._final(owner, "reply", "hour", horizon, start, HOUR,
                                           within(self.hours[start], horizon)))
            for day in days:
                if before < day + DAY + seconds <= after:
                    out.append(self._final(owner, "reply", "day", horizon, day, DAY,
                                           within(self.day_of_hours(day), horizon)))
        for day in sorted(self.inmail_days):
            if before < day + DAY + self.inmail_horizon <= after:
                out.append(self._final(owner, "inmail", "day", self.inmail_name, day, DAY,
                                       dict(self.inmail_days[day])))
        for start in [s for s in self.hours
                      if math.floor(s / DAY) * DAY + DAY + LONGEST_REPLY_HORIZON <= after]:
            del self.hours[start]
        for day in [d for d in self.inmail_days if d + DAY + self.inmail_horizon <= after]:
            del self.inmail_days[day]
        return out

    def _final(self, owner: int, kind: str, resolution: str, horizon: str, start: int,
               size: int, counts: Partial) -> CohortFinal:
        recent = self.finals.setdefault(f"{kind}/{resolution}/{horizon}", {})
        recent[start] = counts
        for old in sorted(recent)[:-RECENT_FINALS]:
            del recent[old]
        return CohortFinal(owner, kind, resolution, horizon, start, start + size, counts)

    def day_of_hours(self, day: int) -> Partial:
        return merged(c for s, c in self.hours.items() if day <= s < day + DAY)

    def provisional(self, kind: str, resolution: str, start: int) -> Partial:
        """A cohort's counts so far (every reply or response that has come)."""
        if kind == "inmail":
            return self.inmail_days.get(start, {})
        return self.hours.get(start, {}) if resolution == "hour" else self.day_of_hours(start)

    # --- persistence ----------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "hours": {str(s): encode(c) for s, c in self.hours.items()},
            "inmail_days": {str(s): encode(c) for s, c in self.inmail_days.items()},
            "finals": {
                name: {str(s): encode(c) for s, c in recent.items()}
                for name, recent in self.finals.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], inmail_horizon: float) -> Cohorts:
        return cls(
            inmail_horizon,
            {int(s): decode(c) for s, c in data["hours"].items()},
            {int(s): decode(c) for s, c in data["inmail_days"].items()},
            {
                name: {int(s): decode(c) for s, c in recent.items()}
                for name, recent in data["finals"].items()
            },
        )
