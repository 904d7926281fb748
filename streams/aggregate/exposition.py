"""``/metrics``: the last closed window of every partition this worker owns.

Each owner (an aggregate owner of a partials partition, a risk owner of an activity
partition) keeps its last few closed windows as counters; a scrape sums the owners'
values for the newest window that all of them have closed, so a worker never mixes
two windows. Workers own disjoint partitions, so PromQL ``sum()`` over workers is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.catalogue import window_families
from streams.partials import Key, Partial, merge_into
from streams.windows import GlobalWatermark


class WindowOwner(Protocol):
    watermark: GlobalWatermark
    recent: Mapping[int, Mapping[Key, int]]
    late_events: int


class WindowCollector(Collector):
    def __init__(self, owners: Callable[[], Iterable[WindowOwner]], window_size: int) -> None:
        self._owners = owners
        self._window_size = window_size

    def collect(self) -> Iterator[Metric]:
        owners = list(self._owners())
        late = GaugeMetricFamily(
            "messaging_aggregate_late_events",
            "Events whose partial reached its owner after the window had closed.",
        )
        late.add_metric([], sum(o.late_events for o in owners))
        yield late
        closed = [o.watermark.last_closed_start for o in owners]
        starts = [start for start in closed if start is not None]
        if not starts:
            return
        start = min(starts)
        total: Partial = {}
        for owner in owners:
            merge_into(total, owner.recent.get(start, {}))
        yield from window_families(total, start + self._window_size)
