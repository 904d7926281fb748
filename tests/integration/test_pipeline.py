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
from streams.replay import replay
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


def mixed(events: list[dict[str, Any]], bad: list[tuple[bytes, str]]) -> list[tuple[bytes, bytes]]:
    """(key, value) in production order: the bad messages spread evenly through the run."""
    step = len(events) // len(bad)
    out = []
    for i, event in enumerate(events):
        out.append((event["conversation_id"].encode(), orjson.dumps(event)))
        if i % step == step - 1 and i // step < len(bad):
            out.append((event["conversation_id"].encode(), bad[i // step][0]))
    return out


def produce(settings: Settings, records: list[tuple[bytes, bytes]]) -> None:
    async def run() -> None:
        await ensure_topics(settings)
        async with KafkaSink(settings, settings.events_topic) as sink:
            await sink.write_raw(records)

    asyncio.run(run())


def window_samples_of(sample_list: list[list[Any]]) -> dict[reference.SampleKey, float]:
    return {(name, frozenset(labels.items())): value for name, labels, value in sample_list}


def sum_owners(window_records: list[dict[str, Any]]) -> dict[reference.SampleKey, float]:
    """One window's samples summed over its owners' records (window end taken once)."""
    total: Counter[reference.SampleKey] = Counter()
    for record in window_records:
        for key, value in window_samples_of(record["samples"]).items():
            if key[0] == "messaging_window_end_timestamp_seconds":
                total[key] = value
            else:
                total[key] += value
    return dict(total)


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
    records = mixed(events, bad)
    reasons_expected = Counter(reason for _, reason in bad)
    produce(settings, records)

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
        stream_totals = {}
        for start, window_records in sorted(by_window.items()):
            owners = [r["owner"] for r in window_records]
            assert len(owners) == len(set(owners)), f"window {start} published twice by an owner"
            total = sum_owners(window_records)
            assert total == reference.samples(tallies[start], start + WINDOW), f"window {start}"
            stream_totals[start] = total

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
        replayed = replay((value for _, value in records), settings)

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

        # --- the offline replay of the same run agrees exactly -------------------------
        assert replayed.invalid == reasons_expected
        assert {(f.rule, f.sender_id, f.window_start) for f in replayed.flags} == set(published)
        by_flag = {(r["rule"], r["sender_id"], r["window_start"]): r for r in flag_records}
        for flag in replayed.flags:  # the evidence too
            assert flag.record() == by_flag[(flag.rule, flag.sender_id, flag.window_start)]
        for record in replayed.window_records(WINDOW):
            stream_total = stream_totals[record["window_start"]]
            assert window_samples_of(record["samples"]) == stream_total
        assert len(replayed.windows) == len(stream_totals)

        # --- the malformed input: DLQ, counted, reasons -------------------------------
        dlq = read_topic(settings, settings.dlq_topic)
        reasons = Counter(dict(m.headers)["dlq.reason"].decode() for m in dlq)
        assert reasons == reasons_expected
        invalid = {
            dict(labels)["reason"]: v for (name, labels), v in scraped.items()
            if name == "messaging_invalid_events_total"
        }
        assert {r: c for r, c in invalid.items() if c} == dict(reasons)
        assert processed() == EVENTS
    finally:
        assert worker.stop() == 0
