"""Offline recomputation of every window and flag from a JSONL file of events.

The same pure code as the live worker, in the same order: events are partitioned by
``conversation_id`` exactly as the producer partitions them, each partition's events
go through its :class:`PartitionCore` in file order, the resulting partial and activity
records go to the aggregate and risk owners, and at the end every input partition is
marked idle, which closes every window (and the hours and days the watermark has
passed). Stream and replay therefore agree exactly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from streams.aggregate.cohorts import CohortFinal
from streams.aggregate.owner import OwnerState, Published
from streams.catalogue import FLAGGED_SENDERS, ROLLUP_SECONDS, window_samples
from streams.events import parse
from streams.ingest.conversations import BatchWindows, new_core
from streams.ingest.records import activity_records, mark_record, partial_records
from streams.kafka.io import partition_for
from streams.partials import Partial, merge_into
from streams.risk.rules import Flag, RiskRules, RiskState
from streams.settings import Settings


@dataclass
class ReplayResult:
    windows: dict[int, Partial] = field(default_factory=dict)  # start -> all owners merged
    rollups: dict[tuple[str, int], Partial] = field(default_factory=dict)  # (hour|day, start)
    cohort_finals: list[CohortFinal] = field(default_factory=list)  # of every owner
    flags: list[Flag] = field(default_factory=list)
    invalid: Counter[str] = field(default_factory=Counter)
    late_events: int = 0
    events: int = 0

    def window_records(self, window_size: int) -> list[dict[str, Any]]:
        """One record per window, hour and day closed, the samples as the live
        ``messaging.metrics`` has them."""
        closed = [("minute", start, window_size, counts)
                  for start, counts in sorted(self.windows.items())]
        closed += [(resolution, start, ROLLUP_SECONDS[resolution], counts)
                   for (resolution, start), counts in sorted(self.rollups.items())]
        return [
            {
                "kind": "window",
                "resolution": resolution,
                "window_start": start,
                "window_end": start + size,
                "samples": [
                    s for s in window_samples(counts, start + size, resolution, every_series=True)
                    if s[0] != FLAGGED_SENDERS
                ],
            }
            for resolution, start, size, counts in closed
        ]


def replay(lines: Iterable[bytes], settings: Settings) -> ReplayResult:
    result = ReplayResult()
    sources = settings.events_partitions
    size = settings.window_seconds
    cores = {p: new_core(settings) for p in range(sources)}
    batches = {p: BatchWindows() for p in range(sources)}
    offsets = dict.fromkeys(range(sources), -1)
    for raw in lines:
        result.events += 1
        event, rejection = parse(raw, settings.max_event_bytes)
        if rejection is not None:
            result.invalid[rejection.reason] += 1
            continue
        assert event is not None
        source = partition_for(event.conversation_id.encode(), sources)
        offsets[source] += 1
        reason = cores[source].admit(event)
        if reason is not None:
            result.invalid[reason] += 1
            continue
        if not cores[source].add(event, batches[source]):
            result.late_events += 1

    horizon = settings.inmail_response_horizon_seconds
    owners = {p: OwnerState(p, size, horizon) for p in range(settings.partials_partitions)}
    rules = RiskRules.from_settings(settings)
    risks = {p: RiskState(p, size, rules) for p in range(settings.activity_partitions)}
    for source, batch in batches.items():
        for partition, _key, record in partial_records(
            source, offsets[source], batch, settings.partials_partitions
        ):
            owners[partition].apply(record)
        for partition, record in activity_records(
            source, offsets[source], batch, settings.activity_partitions
        ):
            risks[partition].apply(record)
    closed: list[Published] = []
    for source, core in cores.items():
        core.clock.idle = True  # the file has ended: close every window
        mark = mark_record(source, sources, core.clock)
        for owner in owners.values():
            closed.extend(owner.apply(mark))
        for risk in risks.values():
            result.flags.extend(risk.apply(mark))
    for item in closed:
        if isinstance(item, CohortFinal):
            result.cohort_finals.append(item)
            continue
        window = item
        total = (
            result.windows.setdefault(window.start, {}) if window.resolution == "minute"
            else result.rollups.setdefault((window.resolution, window.start), {})
        )
        for counts in window.segments.values():
            merge_into(total, counts)
    return result
