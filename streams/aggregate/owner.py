"""What one owner of a partials partition keeps: open windows, watermark, dedup marks.

Pure code. The Faust aggregate agent stores one :class:`OwnerState` per partials
partition in a table (one changelog record holds it all, so windows, the watermark and
the applied-offset marks are always restored together) and feeds it the partial and
watermark records of that partition in order.

Exactly-once on this side: every partial names its source (segment, input partition,
last input offset of the batch). A partial at or below the offset already applied for
its (segment, source) is a redelivery and is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from streams import distinct
from streams.aggregate.closed import ClosedWindow
from streams.aggregate.cohorts import CohortFinal, Cohorts
from streams.aggregate.rollups import Rollups
from streams.partials import (
    ACTIVE_SENDERS,
    EVENTS,
    GLOBAL_SEGMENT,
    Partial,
    decode,
    encode,
    merge_into,
    merged,
)
from streams.windows import GlobalWatermark

RECENT_WINDOWS = 5  # closed windows kept for /metrics (a scrape may trail a close)


Published = ClosedWindow | CohortFinal  # what closing on a mark yields
INMAIL_HORIZON = 30 * 86_400  # LinkedIn's: the setting INMAIL_RESPONSE_HORIZON_SECONDS


@dataclass(slots=True)
class OwnerState:
    owner: int
    window_size: int
    inmail_horizon: float = INMAIL_HORIZON
    windows: dict[int, dict[str, Partial]] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    watermark: GlobalWatermark = field(init=False)
    senders: dict[int, bytes] = field(default_factory=dict)  # window -> merged sketch
    recent: dict[int, Partial] = field(default_factory=dict)
    rollups: Rollups = field(default_factory=Rollups)
    cohorts: Cohorts = field(init=False)
    late_events: int = 0
    duplicates: int = 0
    # the partials offset this state reflects: kept in its record's header, not in it
    # (a restore compares records by it without decoding them; see state_records)
    position: int = -1

    def __post_init__(self) -> None:
        self.watermark = GlobalWatermark(self.window_size)
        self.cohorts = Cohorts(self.inmail_horizon)

    # --- records -------------------------------------------------------------------
    def apply(self, record: dict[str, Any]) -> list[Published]:
        if record["kind"] == "partial":
            self.apply_partial(record)
            return []
        return self.apply_mark(record)

    def apply_partial(self, record: dict[str, Any]) -> None:
        mark = f"{record['segment']}|{record['source']}"
        offset = record["offset"]
        if offset <= self.applied.get(mark, -1):
            self.duplicates += 1
            return
        self.applied[mark] = offset
        segment = record["segment"]
        if "cohorts" in record:
            self.cohorts.add(record["cohorts"])
        for start_text, data in record["windows"].items():
            start = int(start_text)
            counts = decode(data)
            if start + self.window_size <= self.watermark.value:
                # closed already (a source went idle, then resumed): counted, not applied
                self.late_events += sum(v for k, v in counts.items() if k[0] == EVENTS)
                continue
            window = self.windows.setdefault(start, {})
            merge_into(window.setdefault(segment, {}), counts)
            sketch = record.get("senders", {}).get(start_text)
            if sketch is not None:
                previous = self.senders.get(start)
                incoming = distinct.from_text(sketch)
                self.senders[start] = distinct.union(
                    [incoming] if previous is None else [previous, incoming]
                )

    def apply_mark(self, record: dict[str, Any]) -> list[Published]:
        before = self.watermark.value
        value = self.watermark.apply_mark(record)
        closing = sorted(start for start in self.windows if start + self.window_size <= value)
        closed = []
        for start in closing:
            segments = self.windows.pop(start)
            sketch = self.senders.pop(start, None)
            if sketch is not None:
                everyone = segments.setdefault(GLOBAL_SEGMENT, {})
                everyone[(ACTIVE_SENDERS,)] = distinct.estimate(sketch)
            closed.append(ClosedWindow(self.owner, start, start + self.window_size, segments))
            self.recent[start] = merged(segments.values())
            self.rollups.add(start, segments, sketch)
        if closing and len(self.recent) > RECENT_WINDOWS:
            for start in sorted(self.recent)[: len(self.recent) - RECENT_WINDOWS]:
                del self.recent[start]
        # hours and days: also when no minute closed (a quiet end of an hour)
        rolled = self.rollups.close(self.owner, value)
        for hour in rolled:
            if hour.resolution == "hour":  # the cohort of its starts: their number
                self.cohorts.add_started(hour.start, hour.segments)
        published: list[Published] = [*closed, *rolled]
        if value > before:
            published.extend(self.cohorts.close(self.owner, before, value))
        return published

    # --- persistence (one table value) ------------------------------------------------
    def dumps(self) -> bytes:
        return orjson.dumps(self.to_json())

    @classmethod
    def loads(cls, raw: bytes) -> OwnerState:
        return cls.from_json(orjson.loads(raw))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types only: the Faust table stores it with its json codec."""
        return {
            "owner": self.owner,
            "window_size": self.window_size,
            "windows": {
                str(s): {seg: encode(p) for seg, p in segs.items()}
                for s, segs in self.windows.items()
            },
            "senders": {str(s): distinct.to_text(raw) for s, raw in self.senders.items()},
            "applied": self.applied,
            "watermark": self.watermark.to_json(),
            "recent": {str(s): encode(p) for s, p in self.recent.items()},
            "rollups": self.rollups.to_json(),
            "inmail_horizon": self.inmail_horizon,
            "cohorts": self.cohorts.to_json(),
            "late_events": self.late_events,
            "duplicates": self.duplicates,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OwnerState:
        state = cls(data["owner"], data["window_size"],
                    data.get("inmail_horizon", INMAIL_HORIZON))
        state.windows = {
            int(s): {seg: decode(p) for seg, p in segs.items()}
            for s, segs in data["windows"].items()
        }
        state.senders = {int(s): distinct.from_text(t) for s, t in data["senders"].items()}
        state.applied = data["applied"]
        state.watermark = GlobalWatermark.from_json(state.window_size, data["watermark"])
        state.recent = {int(s): decode(p) for s, p in data["recent"].items()}
        if "rollups" in data:  # a state written before rollups has none open
            state.rollups = Rollups.from_json(data["rollups"])
        if "cohorts" in data:
            state.cohorts = Cohorts.from_json(data["cohorts"], state.inmail_horizon)
        state.late_events = data["late_events"]
        state.duplicates = data["duplicates"]
        return state

