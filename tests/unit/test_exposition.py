"""``/metrics`` of the aggregate owners: windows, hours, days and cohorts render, also
while some owners have no watermark yet (a fresh partition, a restore)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from streams.aggregate.exposition import WindowCollector
from streams.aggregate.owner import OwnerState
from tests.unit.test_owner import EVENT, mark, partial

DAY0 = 1_789_948_800


def test_an_owner_without_a_watermark_does_not_break_the_scrape() -> None:
    ready = OwnerState(owner=0, window_size=60)
    record = partial(0, 1, DAY0 + 600, {EVENT: 1, ("cohort_started", "inmail"): 1})
    record["cohorts"] = {"hour": {str(DAY0): {"cohort_started|inmail": 1}}}
    ready.apply(record)
    ready.apply(mark(0, DAY0 + 3 * 3600, sources=1))
    fresh = OwnerState(owner=1, window_size=60)  # assigned, nothing heard yet
    registry = CollectorRegistry()
    registry.register(WindowCollector(lambda: [ready, fresh], 60))
    text = generate_latest(registry).decode()
    assert 'messaging_final_cohort_conversations{channel="inmail",horizon="1h",resolution="hour"} 1.0' in text
    assert "messaging_hourly_window_end_timestamp_seconds" in text


def test_no_window_is_shown_while_an_owned_partition_is_still_restoring() -> None:
    owner = OwnerState(owner=0, window_size=60)
    owner.apply(partial(0, 1, DAY0 + 10, {EVENT: 3}))
    owner.apply(mark(0, DAY0 + 60, sources=1))
    owner.late_events = 2
    settled = [False]
    registry = CollectorRegistry()
    registry.register(WindowCollector(lambda: [owner], 60, lambda: settled[0]))
    # a short sum would pass for the whole: no window at all until every owner is here
    assert registry.get_sample_value("messaging_window_end_timestamp_seconds") is None
    assert registry.get_sample_value("messaging_aggregate_late_events") == 2
    settled[0] = True
    assert registry.get_sample_value("messaging_window_end_timestamp_seconds") == DAY0 + 60
