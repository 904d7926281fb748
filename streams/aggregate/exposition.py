"""``/metrics``: the last closed window (and hour, and day) of every partition this
worker owns.

Each owner (an aggregate owner of a partials partition, a risk owner of an activity
partition) keeps its last few closed windows as counters; a scrape sums the owners'
values for the newest window that all of them have closed, so a worker never mixes
two windows. Workers own disjoint partitions, so PromQL ``sum()`` over workers is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.aggregate.cohorts import horizon_name
from streams.aggregate.owner import OwnerState
from streams.catalogue import (
    COHORT_SECONDS,
    ROLLUP_SECONDS,
    CohortItem,
    cohort_families,
    window_families,
)
from streams.partials import REPLY_HORIZONS, Key, Partial, merge_into, merged
from streams.windows import GlobalWatermark


class WindowOwner(Protocol):
    watermark: GlobalWatermark
    recent: Mapping[int, Mapping[Key, int]]
    late_events: int


class WindowCollector(Collector):
    def __init__(
        self, owners: Callable[[], Iterable[WindowOwner]], window_size: int,
        settled: Callable[[], bool] = lambda: True,
    ) -> None:
        self._owners = owners
        self._window_size = window_size
        # False while an owner this worker was assigned is still restoring: its share
        # would be missing from every sum, so no window is shown until it is back
        self._settled = settled

    def collect(self) -> Iterator[Metric]:
        owners = list(self._owners())
        late = GaugeMetricFamily(
            "messaging_aggregate_late_events",
            "Events whose partial reached its owner after the window had closed.",
        )
        late.add_metric([], sum(o.late_events for o in owners))
        yield late
        if not self._settled():
            return
        closed = [o.watermark.last_closed_start for o in owners]
        starts = [start for start in closed if start is not None]
        if not starts:
            return
        start = min(starts)
        total: Partial = {}
        for owner in owners:
            merge_into(total, owner.recent.get(start, {}))
        yield from window_families(total, start + self._window_size)
        aggregate = [o for o in owners if isinstance(o, OwnerState)]
        yield from self._rollup_families(aggregate)
        yield from self._cohort_families(aggregate)

    def _rollup_families(self, owners: list[OwnerState]) -> Iterator[Metric]:
        """The last hour and day every aggregate owner has closed, once any has closed one
        (before that there is no hour to show, not an hour of zeros)."""
        for resolution, size in ROLLUP_SECONDS.items():
            if not any(o.rollups.recent[resolution] for o in owners):
                continue
            starts = [o.watermark.last_closed(size) for o in owners]
            start = min(s for s in starts if s is not None)
            total: Partial = {}
            for owner in owners:
                merge_into(total, owner.rollups.recent[resolution].get(start, {}))
            yield from window_families(total, start + size, resolution)

    def _cohort_families(self, owners: list[OwnerState]) -> Iterator[Metric]:
        """Finals: per kind, resolution and horizon, the newest cohort every owner has
        made final. Provisional: the newest cohort that has ended, as it stands."""
        if not any(o.cohorts.hours or o.cohorts.finals for o in owners):
            return
        # owners without a watermark yet have closed nothing: they add nothing either
        marked = [o.watermark.value for o in owners if o.watermark.value != -math.inf]
        if not marked:
            return
        watermark = min(marked)
        inmail = owners[0].cohorts.inmail_horizon
        finals: list[CohortItem] = []
        kinds = [("reply", resolution, name, seconds)
                 for resolution in COHORT_SECONDS for name, seconds in REPLY_HORIZONS.items()]
        kinds.append(("inmail", "day", horizon_name(inmail), inmail))
        for kind, resolution, horizon, seconds in kinds:
            size = COHORT_SECONDS[resolution]
            # the newest final every owner is past (an owner without it had no data)
            bound = math.floor((watermark - seconds) / size) * size - size
            recent = [o.cohorts.finals.get(f"{kind}/{resolution}/{horizon}", {}) for o in owners]
            starts = [s for r in recent for s in r if s <= bound]
            if starts:
                start = max(starts)
                finals.append((kind, resolution, horizon, start,
                               merged(r.get(start, {}) for r in recent)))
        provisional: list[CohortItem] = []
        for kind, resolution in (("reply", "hour"), ("reply", "day"), ("inmail", "day")):
            size = COHORT_SECONDS[resolution]
            start = math.floor(watermark / size) * size - size
            counts = merged(o.cohorts.provisional(kind, resolution, start) for o in owners)
            provisional.append((kind, resolution, None, start, counts))
        yield from cohort_families("final", finals)
        yield from cohort_families("provisional", provisional)
