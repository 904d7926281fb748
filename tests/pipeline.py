"""Helpers for the integration tests: produce a run, read it back, check the windows."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from typing import Any

import orjson

from producers.sinks import KafkaSink
from streams.kafka_io import ensure_topics
from streams.settings import Settings
from tests import reference
from tests.harness import WorkerProcess, read_topic, wait_until

Samples = dict[reference.SampleKey, float]


def produce(settings: Settings, records: list[tuple[bytes, bytes]]) -> None:
    """Send ``(key, value)`` records to the events topic, in order (creating topics)."""

    async def run() -> None:
        await ensure_topics(settings)
        async with KafkaSink(settings, settings.events_topic) as sink:
            await sink.write_raw(records)

    asyncio.run(run())


def encoded(events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    return [(e["conversation_id"].encode(), orjson.dumps(e)) for e in events]


def samples_of(sample_list: list[list[Any]]) -> Samples:
    return {(name, frozenset(labels.items())): value for name, labels, value in sample_list}


def sum_owners(window_records: list[dict[str, Any]]) -> Samples:
    """One window's samples summed over its owners' records (window end taken once)."""
    total: Counter[reference.SampleKey] = Counter()
    for record in window_records:
        for key, value in samples_of(record["samples"]).items():
            if key[0] == "messaging_window_end_timestamp_seconds":
                total[key] = value
            else:
                total[key] += value
    return dict(total)


def stored_events(settings: Settings, wanted: list[dict[str, Any]]) -> dict[int, list[Any]]:
    """The wanted events as the events topic holds them: per partition, in offset order."""
    by_id = {e["event_id"]: e for e in wanted}
    partitions: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for message in read_topic(settings, settings.events_topic):
        try:
            decoded = orjson.loads(message.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(decoded, dict) and by_id.get(decoded.get("event_id")) == decoded:
            partitions[message.partition].append(decoded)
    assert sum(len(v) for v in partitions.values()) == len(wanted)
    return partitions


def closed_windows(settings: Settings, expected: set[int], timeout: float = 90) -> dict[int, Any]:
    """Wait until every expected window is on the metrics topic; records by window start.

    Also asserts that no owner published a window twice.
    """

    def published() -> dict[int, list[Any]]:
        by_window: dict[int, list[Any]] = defaultdict(list)
        for message in read_topic(settings, settings.metrics_topic):
            record = orjson.loads(message.value)
            by_window[record["window_start"]].append(record)
        return by_window if set(by_window) >= expected else {}

    by_window = wait_until(published, timeout, "every window to close")
    for start, records in by_window.items():
        owners = [r["owner"] for r in records]
        assert len(owners) == len(set(owners)), f"window {start} published twice by an owner"
    return by_window


def assert_windows_equal_recount(
    by_window: dict[int, Any], tallies: dict[int, Any], window: int
) -> dict[int, Samples]:
    assert set(by_window) == set(tallies)
    totals = {}
    for start, records in sorted(by_window.items()):
        totals[start] = sum_owners(records)
        assert totals[start] == reference.samples(tallies[start], start + window), start
    return totals


def processed_total(*workers: WorkerProcess) -> float:
    return sum(
        value for worker in workers for (name, _), value in worker.scrape().items()
        if name == "messaging_events_processed_total"
    )


def last_window_gauges(workers: list[WorkerProcess], window_end: float) -> Samples:
    """Every worker's scrape once all show ``window_end``; series summed over workers."""

    def scrapes() -> list[Samples] | None:
        scraped = [w.scrape() for w in workers]
        ends = {s.get(("messaging_window_end_timestamp_seconds", frozenset())) for s in scraped}
        return scraped if ends == {window_end} else None

    total: Counter[reference.SampleKey] = Counter()
    for scraped in wait_until(scrapes, 30, "the gauges of the last window"):
        for key, value in scraped.items():
            if key[0] == "messaging_window_end_timestamp_seconds":
                total[key] = value
            else:
                total[key] += value
    return dict(total)
