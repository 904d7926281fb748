"""Helpers for the integration tests: produce a run, read it back, check the windows."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import Counter, defaultdict
from typing import Any

import orjson

from producers.profile import SimulationProfile
from producers.simulator import Simulator
from producers.sinks import KafkaSink
from streams.kafka.io import ensure_topics
from streams.settings import Settings
from tests import reference
from tests.harness import WorkerProcess, read_topic, wait_until

Samples = dict[reference.SampleKey, float]
START_TS = 1_790_000_000.0  # 2026-09-21T13:33:20Z, a fixed UTC instant


def simulated(count: int, seed: int, members: int = 5000) -> list[dict[str, Any]]:
    """A seeded run of ``count`` events from START_TS (1000 events/s at 60x)."""
    simulator = Simulator(
        SimulationProfile(), seed=seed, start_ts=START_TS, rate=1000, speed=60, members=members
    )
    return list(itertools.islice(simulator.events(), count))


def split_at_windows(
    events: list[dict[str, Any]], parts: int, window: int
) -> list[list[dict[str, Any]]]:
    """About equal parts of a run, cut only where a window starts.

    A test that pauses between parts pauses the traffic: once every input partition is
    idle the watermark closes the window holding the newest event, and events of the
    next part in that window would be late. Cut at window starts, only complete windows
    close in a pause, as they would in production.
    """
    assert all(a["ts"] <= b["ts"] for a, b in itertools.pairwise(events)), "not in ts order"
    cuts = []
    for i in range(1, parts):
        target = events[len(events) * i // parts]["ts"]
        boundary = math.floor(target / window) * window
        cuts.append(next(n for n, e in enumerate(events) if e["ts"] >= boundary))
    edges = [0, *cuts, len(events)]
    chunks = [events[a:b] for a, b in itertools.pairwise(edges)]
    assert all(chunks) and sum(map(len, chunks)) == len(events)
    return chunks


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


def sum_owners(
    window_records: list[dict[str, Any]], timestamps: tuple[str, ...] = ("window_end",)
) -> Samples:
    """One window's samples summed over its owners' records; its timestamps (a window's
    end, a cohort's start: every sample whose name holds one of ``timestamps``) are the
    same in every record and taken once."""
    total: Counter[reference.SampleKey] = Counter()
    for record in window_records:
        for key, value in samples_of(record["samples"]).items():
            if any(part in key[0] for part in timestamps):
                total[key] = value
            else:
                total[key] += value
    return dict(total)


# Risk thresholds low enough that a short run raises flags of every rule, so that the
# tests compare flags, not empty sets.
LOW_RISK_THRESHOLDS = {
    "risk_velocity_messages": 4, "risk_spam_reports": 1, "risk_inmail_min_sent": 3,
    "risk_inmail_min_response_rate": 0.5, "risk_inmail_horizon_seconds": 600,
    "risk_inmail_bucket_seconds": 120,
}


def expected_flags(
    settings: Settings, partitions: dict[int, list[Any]]
) -> set[tuple[str, str, int]]:
    """The independent recount of every flag the settings' risk rules should raise."""
    return reference.recount_flags(
        partitions, settings.window_seconds, velocity=settings.risk_velocity_messages,
        reports=settings.risk_spam_reports, inmail_min=settings.risk_inmail_min_sent,
        inmail_rate=settings.risk_inmail_min_response_rate,
        horizon=settings.risk_inmail_horizon_seconds, bucket=settings.risk_inmail_bucket_seconds,
        response_horizon=settings.inmail_response_horizon_seconds,
    )


def stored_events(settings: Settings, wanted: list[dict[str, Any]]) -> dict[int, list[Any]]:
    """The wanted events as the events topic holds them: per partition, in offset order.

    A repeated event id counts once, at its first occurrence (the contract's dedup).
    """
    by_id = {e["event_id"]: e for e in wanted}
    partitions: dict[int, list[dict[str, Any]]] = defaultdict(list)
    seen: set[str] = set()
    for message in read_topic(settings, settings.events_topic):
        try:
            decoded = orjson.loads(message.value)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(decoded, dict) or decoded.get("event_id") in seen:
            continue
        if by_id.get(decoded.get("event_id")) == decoded:
            seen.add(decoded["event_id"])
            partitions[message.partition].append(decoded)
    assert sum(len(v) for v in partitions.values()) == len(wanted)
    return partitions


def closed_windows(
    settings: Settings, tallies: dict[int, Any], window: int, timeout: float = 90,
    crashed: bool = False,
) -> dict[int, Any]:
    """Wait until every window of the recount is on the metrics topic, from every owner
    that had a share of it (their records add up to the recount); records by window.

    An owner may publish a window again after a crash (the topic is at-least-once,
    idempotent by window and owner): the copies must be identical, and one is kept.
    Without a crash (``crashed=False``) no window may be published twice.
    """

    def published() -> dict[int, list[Any]]:
        return published_windows(settings, "minute", crashed)

    def complete() -> dict[int, list[Any]] | None:
        unique = published()
        return unique if not window_differences(unique, tallies, window) else None

    try:
        return wait_until(complete, timeout, "every window to close, from every owner")
    except TimeoutError:
        differences = window_differences(published(), tallies, window)
        assert not differences, f"published windows differ from the recount: {differences}"
        raise


CohortKey = tuple[str, str, str, int]  # kind, resolution, horizon, cohort start


def published_cohorts(settings: Settings, crashed: bool = False) -> dict[CohortKey, Samples]:
    """Every cohort final on the metrics topic, its owners' samples summed. An owner
    that publishes a final twice (after a crash) must publish it identically."""
    by_owner: dict[tuple[CohortKey, int], Any] = {}
    for message in read_topic(settings, settings.metrics_topic):
        record = orjson.loads(message.value)
        if record.get("kind") != "cohort":
            continue
        key = (record["cohort"], record["resolution"], record["horizon"], record["cohort_start"])
        previous = by_owner.setdefault((key, record["owner"]), record)
        if previous is not record:
            assert crashed, f"cohort final {key} published twice by owner {record['owner']}"
            assert previous == record, f"cohort final {key} changed after it was published"
    totals: dict[CohortKey, list[Any]] = defaultdict(list)
    for (key, _), record in by_owner.items():
        totals[key].append(record)
    return {key: sum_owners(records, timestamps=("start_timestamp",)) for key, records in totals.items()}


def expected_cohorts(
    partitions: dict[int, list[Any]], watermark: float, response_horizon: float
) -> dict[CohortKey, Samples]:
    """The cohort finals the recount says are due once the watermark is ``watermark``."""
    hours, days = reference.recount_cohorts(partitions, response_horizon)
    out: dict[CohortKey, Samples] = {}
    for horizon, seconds in reference.HORIZONS.items():
        for start, tallies in hours.items():
            if start + 3600 + seconds <= watermark:
                out[("reply", "hour", horizon, start)] = reference.cohort_samples(
                    tallies, "hour", horizon, start)
        for day in {math.floor(s / 86_400) * 86_400 for s in hours}:
            if day + 86_400 + seconds <= watermark:
                out[("reply", "day", horizon, day)] = reference.cohort_samples(
                    reference.merge_hours(hours, day), "day", horizon, day)
    name = f"{response_horizon / 86_400:g}d" if response_horizon >= 86_400 else (
        f"{response_horizon / 3600:g}h")
    for day, tallies in days.items():
        if day + 86_400 + response_horizon <= watermark:
            out[("inmail", "day", name, day)] = reference.inmail_cohort_samples(tallies, day)
    return out


def published_windows(
    settings: Settings, resolution: str, crashed: bool = False
) -> dict[int, list[Any]]:
    """The closed windows of one resolution on the metrics topic: records by window
    start, one per owner. A window published twice by an owner (after a crash, the topic
    being at-least-once) must be identical; without a crash it must not happen."""
    by_window: dict[int, list[Any]] = defaultdict(list)
    for message in read_topic(settings, settings.metrics_topic):
        record = orjson.loads(message.value)
        if (record.get("kind", "window"), record.get("resolution", "minute")) == (
            "window", resolution
        ):
            by_window[record["window_start"]].append(record)
    unique = {}
    for start, records in by_window.items():
        by_owner: dict[int, Any] = {}
        for record in records:
            previous = by_owner.setdefault(record["owner"], record)
            if previous is not record:
                what = f"{resolution} {start}"
                assert crashed, f"{what} published twice by owner {record['owner']}"
                assert previous == record, f"{what} published twice, differently"
        unique[start] = list(by_owner.values())
    return unique


def window_differences(
    by_window: dict[int, Any], tallies: dict[int, Any], window: int,
    resolution: str = "minute",
) -> dict[Any, Any]:
    """What differs between the published windows and the recount (empty: nothing)."""
    if set(by_window) != set(tallies):
        return {"windows": (sorted(set(by_window) ^ set(tallies)))}
    out = {}
    for start, records in sorted(by_window.items()):
        total = sum_owners(records)
        trailing = reference.trailing_senders(tallies, start) if resolution == "day" else None
        expected = reference.samples(tallies[start], start + window, resolution, trailing,
                                     every_series=True)
        differing = {
            k: (total.get(k), expected.get(k))
            for k in set(expected) | set(total) if total.get(k) != expected.get(k)
        }
        if differing:
            out[start] = differing
    return out


def rollup_differences(
    settings: Settings, partitions: dict[int, list[Any]], minute_tallies: dict[int, Any],
    crashed: bool = False,
) -> dict[str, Any]:
    """Every hour and day the watermark has passed, published and equal to the recount
    (at the end of a run every source is idle: the watermark is the end of the newest
    minute window). Empty: nothing differs."""
    watermark = max(minute_tallies) + settings.window_seconds
    out = {}
    for resolution, size in (("hour", 3600), ("day", 86_400)):
        tallies = reference.recount(partitions, size)
        closed = {start: t for start, t in tallies.items() if start + size <= watermark}
        published = published_windows(settings, resolution, crashed)
        differences = window_differences(published, closed, size, resolution)
        if differences:
            out[resolution] = differences
    return out


def assert_windows_equal_recount(
    by_window: dict[int, Any], tallies: dict[int, Any], window: int
) -> dict[int, Samples]:
    differences = window_differences(by_window, tallies, window)
    assert not differences, f"(stream, recount): {differences}"
    return {start: sum_owners(records) for start, records in by_window.items()}


def processed_total(*workers: WorkerProcess) -> float:
    return sum(
        value for worker in workers
        for (name, _), value in worker.scrape("messaging_events_processed_total").items()
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


def assert_labels_are_enumerations(scraped: Samples) -> None:
    """No ids, no free text: every label value on /metrics is from a known enumeration."""
    from streams.catalogue import RESPONSES, RISK_RULES
    from streams.events import (
        ANSWERS,
        CHANNELS,
        CONTENT_TYPES,
        ENTRY_POINTS,
        EVENT_TYPES,
        PLATFORMS,
        REJECTION_REASONS,
        SENDER_TYPES,
        SPAM_REASONS,
    )
    from streams.store.partition_store import USAGE_PARTS

    allowed = {
        "platform": set(PLATFORMS), "channel": {*CHANNELS, "unknown"},
        "sender_type": set(SENDER_TYPES), "content_type": set(CONTENT_TYPES),
        "entry_point": set(ENTRY_POINTS), "type": set(EVENT_TYPES),
        "reason": {*SPAM_REASONS, *REJECTION_REASONS, *RISK_RULES},
        "stage": {"ingest", "aggregate", "risk"},
        "answer": set(ANSWERS), "response": set(RESPONSES), "resolution": {"hour", "day"},
        "horizon": {"1h", "24h", "7d"}, "part": set(USAGE_PARTS),
    }
    for name, labels in scraped:
        for label, value in labels:
            if label == "le":
                assert value == "+Inf" or float(value) >= 0, (name, label, value)
                continue
            assert label in allowed, f"{name} has an unknown label {label}={value!r}"
            assert value in allowed[label], f"{name}{{{label}={value!r}}} is not an enumeration"
