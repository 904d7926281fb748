"""The foundation end to end on a real broker: simulator -> worker -> windows.

A seeded run of 20,000 events with 100 malformed messages mixed in goes to fresh
topics; one worker process handles it. Every closed window published to the metrics
topic, and every window gauge on /metrics, must equal an independent recount of the
events topic, exactly; the malformed messages must all be in the DLQ with reasons,
be counted, and change nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest

from producers.profile import SimulationProfile
from producers.simulator import Simulator
from producers.sinks import KafkaSink
from streams.kafka_io import ensure_topics
from streams.settings import Settings
from tests import reference
from tests.harness import WorkerProcess, read_topic, wait_until

pytestmark = pytest.mark.integration

START_TS = 1_790_000_000.0  # 2026-09-21T13:33:20Z, a fixed UTC instant
EVENTS = 20_000
WINDOW = 60


def malformed_messages(count: int) -> list[tuple[bytes, str]]:
    """Bad input of every kind the validator knows, with the reason each must get."""
    good = {
        "event_id": "bad", "type": "message_read", "ts": START_TS + 10,
        "conversation_id": "c-bad", "schema_version": 1, "message_id": "m",
        "reader_id": "r", "platform": "web",
    }
    kinds: list[tuple[bytes, str]] = [
        (b"{not json", "malformed_json"),
        (b"[1, 2, 3]", "not_an_object"),
        (orjson.dumps({k: v for k, v in good.items() if k != "ts"}), "missing_field"),
        (orjson.dumps({**good, "ts": "yesterday"}), "wrong_type"),
        (orjson.dumps({**good, "platform": "blackberry"}), "invalid_enum"),
        (orjson.dumps({**good, "type": "message_deleted"}), "unknown_type"),
        (orjson.dumps({**good, "ts": 1e12}), "invalid_timestamp"),
        (orjson.dumps({**good, "schema_version": 99}), "unsupported_schema_version"),
        (orjson.dumps({**good, "reader_id": "x" * 70_000}), "too_large"),
    ]
    return [kinds[i % len(kinds)] for i in range(count)]


def produce(settings: Settings, events: list[dict[str, Any]], bad: list[tuple[bytes, str]]) -> None:
    async def run() -> None:
        await ensure_topics(settings)
        sink = KafkaSink(settings, settings.events_topic)
        await sink.start()
        step = len(events) // len(bad)
        for i, (raw, _) in enumerate(bad):
            await sink.write_many(events[i * step : (i + 1) * step])
            key = events[i * step]["conversation_id"].encode()
            await sink.write_raw([(key, raw)])
        await sink.write_many(events[len(bad) * step :])
        await sink.close()

    asyncio.run(run())


def window_samples_of(sample_list: list[list[Any]]) -> dict[reference.SampleKey, float]:
    return {(name, frozenset(labels.items())): value for name, labels, value in sample_list}


RISK = {  # low thresholds, so that a short run raises flags of every rule
    "risk_velocity_messages": 4, "risk_spam_reports": 1, "risk_inmail_min_sent": 3,
    "risk_inmail_min_response_rate": 0.5, "risk_inmail_horizon_seconds": 600,
    "risk_inmail_bucket_seconds": 120,
}


def test_windows_and_gauges_equal_an_independent_recount(
    base_settings: Settings, tmp_path
) -> None:
    settings = base_settings.model_copy(update=RISK)
    simulator = Simulator(
        SimulationProfile(), seed=7, start_ts=START_TS, rate=1000, speed=60, members=5000
    )
    events = list(itertools.islice(simulator.events(), EVENTS))
    bad = malformed_messages(100)
    produce(settings, events, bad)

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        started = time.monotonic()

        def processed() -> float:
            return sum(
                v for (name, _), v in worker.scrape().items()
                if name == "messaging_events_processed_total"
            )

        wait_until(lambda: processed() >= EVENTS, 120, "all events processed", 0.2)
        elapsed = time.monotonic() - started
        print(f"worker processed {EVENTS} events in {elapsed:.2f}s "
              f"({EVENTS / elapsed:,.0f} events/s, including start-up)")

        # --- the independent recount, from the events topic as stored ------------------
        by_id = {e["event_id"]: e for e in events}
        partitions: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for message in read_topic(settings, settings.events_topic):
            try:
                decoded = orjson.loads(message.value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(decoded, dict) and by_id.get(decoded.get("event_id")) == decoded:
                partitions[message.partition].append(decoded)
        assert sum(len(v) for v in partitions.values()) == EVENTS
        tallies = reference.recount(partitions, WINDOW)
        expected_windows = set(tallies)

        # --- every closed window on the metrics topic ---------------------------------
        def published() -> dict[int, list[Any]]:
            by_window: dict[int, list[Any]] = defaultdict(list)
            for message in read_topic(settings, settings.metrics_topic):
                record = orjson.loads(message.value)
                by_window[record["window_start"]].append(record)
            return by_window if set(by_window) >= expected_windows else {}

        by_window = wait_until(published, 60, "every window to close")
        assert set(by_window) == expected_windows
        for start, records in sorted(by_window.items()):
            owners = [r["owner"] for r in records]
            assert len(owners) == len(set(owners)), f"window {start} published twice by an owner"
            total: Counter[reference.SampleKey] = Counter()
            for record in records:
                for key, value in window_samples_of(record["samples"]).items():
                    if key[0] == "messaging_window_end_timestamp_seconds":
                        continue
                    total[key] += value
            expected = reference.samples(tallies[start], start + WINDOW)
            expected.pop(("messaging_window_end_timestamp_seconds", frozenset()))
            actual = {k: total.get(k, 0) for k in expected}
            assert actual == expected, f"window {start}"
            assert set(total) <= set(expected)

        # --- the gauges: the last closed window --------------------------------------
        last = max(expected_windows)
        expected_gauges = reference.samples(tallies[last], last + WINDOW)
        names = {name for name, _ in expected_gauges}
        scraped = wait_until(
            lambda: (s := worker.scrape()).get(
                ("messaging_window_end_timestamp_seconds", frozenset())
            ) == last + WINDOW and s,
            30, "the gauges of the last window",
        )
        gauges = {k: v for k, v in scraped.items() if k[0] in names}
        assert gauges == expected_gauges

        # --- risk: every flag, once, and the flagged-senders gauge -------------------
        expected_flags = reference.recount_flags(
            partitions, WINDOW, velocity=4, reports=1, inmail_min=3, inmail_rate=0.5,
            horizon=600, bucket=120,
        )
        assert {rule for rule, _, _ in expected_flags} == {
            "velocity", "spam_reports", "inmail_response"
        }
        flag_records = [orjson.loads(m.value) for m in read_topic(settings, settings.flagged_topic)]
        published = [(r["rule"], r["sender_id"], r["window_start"]) for r in flag_records]
        assert len(published) == len(set(published)), "a flag was published twice"
        assert set(published) == expected_flags
        flagged_gauge = {
            dict(labels)["reason"]: v for (name, labels), v in scraped.items()
            if name == "messaging_flagged_senders"
        }
        last_flags = Counter(rule for rule, _, start in expected_flags if start == last)
        assert flagged_gauge == {r: last_flags.get(r, 0) for r in flagged_gauge}
        assert set(flagged_gauge) == {"velocity", "spam_reports", "inmail_response"}

        # --- the malformed input: DLQ, counted, reasons -------------------------------
        dlq = read_topic(settings, settings.dlq_topic)
        reasons = Counter(dict(m.headers)["dlq.reason"].decode() for m in dlq)
        assert reasons == Counter(reason for _, reason in bad)
        invalid = {
            dict(labels)["reason"]: v for (name, labels), v in scraped.items()
            if name == "messaging_invalid_events_total"
        }
        assert {r: c for r, c in invalid.items() if c} == dict(reasons)
        assert processed() == EVENTS
    finally:
        assert worker.stop() == 0
