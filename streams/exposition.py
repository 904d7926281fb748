"""``/metrics``: the last closed window of every partials partition this worker owns.

Each owner keeps its last few closed windows; a scrape sums the owners' values for
the newest window that all of them have closed, so a worker never mixes two windows.
Workers own disjoint partitions, so PromQL ``sum()`` over workers is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.catalogue import window_families
from streams.owner import OwnerState
from streams.partials import Partial, merge_into


class WindowCollector(Collector):
    def __init__(self, owners: Callable[[], Iterable[OwnerState]], window_size: int) -> None:
        self._owners = owners
        self._window_size = window_size

    def collect(self) -> Iterator[Metric]:
        owners = [o for o in self._owners() if o.last_closed_start is not None]
        late = GaugeMetricFamily(
            "messaging_aggregate_late_events",
            "Events whose partial reached its owner after the window had closed.",
        )
        late.add_metric([], sum(o.late_events for o in owners))
        yield late
        if not owners:
            return
        start = min(o.last_closed_start for o in owners)  # type: ignore[type-var]
        total: Partial = {}
        for owner in owners:
            merge_into(total, owner.closed_counts(start))
        yield from window_families(total, start + self._window_size)
