"""The foundation end to end on a real broker: simulator -> worker -> windows.

A seeded run of 20,000 events with 100 malformed messages mixed in goes to fresh
topics; one worker process handles it. Every closed window published to the metrics
topic, and every window gauge on /metrics, must equal an independent recount of the
events topic, exactly; the malformed messages must all be in the DLQ with reasons,
be counted, and change nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
import pytest

from streams.aggregate.state_records import position_of
from streams.replay import replay
from streams.settings import Settings
from streams.store.partition_store import USAGE_PARTS
from tests import reference
from tests.harness import WorkerProcess, read_topic, wait_until
from tests.pipeline import (
    LOW_RISK_THRESHOLDS,
    START_TS,
    assert_labels_are_enumerations,
    assert_windows_equal_recount,
    closed_windows,
    expected_flags,
    last_window_gauges,
    processed_total,
    produce,
    samples_of,
    simulated,
    stored_events,
)

pytestmark = pytest.mark.integration

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




def test_windows_and_gauges_equal_an_independent_recount(
    base_settings: Settings, tmp_path
) -> None:
    settings = base_settings.model_copy(update=LOW_RISK_THRESHOLDS)
    events = simulated(EVENTS, seed=7)
    bad = malformed_messages(100)
    records = mixed(events, bad)
    reasons_expected = Counter(reason for _, reason in bad)
    produce(settings, records)

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        started = time.monotonic()

        wait_until(lambda: processed_total(worker) >= EVENTS, 120, "all events processed", 0.2)
        elapsed = time.monotonic() - started
        print(f"worker processed {EVENTS} events in {elapsed:.2f}s "
              f"({EVENTS / elapsed:,.0f} events/s, including start-up)")

        # --- the independent recount, from the events topic as stored ------------------
        partitions = stored_events(settings, events)
        tallies = reference.recount(partitions, WINDOW)

        # --- every closed window on the metrics topic ---------------------------------
        by_window = closed_windows(settings, tallies, WINDOW)
        stream_totals = assert_windows_equal_recount(by_window, tallies, WINDOW)

        # --- the gauges: the last closed window --------------------------------------
        last = max(tallies)
        expected_gauges = reference.samples(tallies[last], last + WINDOW)
        names = {name for name, _ in expected_gauges}
        scraped = last_window_gauges([worker], last + WINDOW)
        whole = worker.scrape()
        assert_labels_are_enumerations(whole)
        # the local state's RocksDB: both stages report it, and the ingest's holds data
        store = {(dict(labels)["stage"], dict(labels)["part"]): value
                 for (name, labels), value in whole.items() if name == "messaging_state_store_bytes"}
        assert set(store) == {(stage, part) for stage in ("ingest", "risk") for part in USAGE_PARTS}
        assert store["ingest", "memtables"] > 100_000, store
        # the event ids within the dedup horizon: at most every accepted event's
        accepted = sum(value for (name, _), value in whole.items()
                       if name in ("messaging_events_processed_total", "messaging_late_events_total"))
        ids = whole["messaging_event_ids", frozenset()]
        assert 0 < ids <= accepted, (ids, accepted)
        assert whole["messaging_event_ids_memory_bytes", frozenset()] >= 16 * ids
        only = worker.scrape("messaging_events_processed_total")  # ?name[]=: that family
        assert {name for name, _ in only} == {"messaging_events_processed_total"}
        assert only == {k: v for k, v in whole.items() if k in only}
        gauges = {k: v for k, v in scraped.items() if k[0] in names}
        assert gauges == expected_gauges

        # --- risk: every flag, once, and the flagged-senders gauge -------------------
        expected = expected_flags(settings, partitions)
        replayed = replay((value for _, value in records), settings)

        assert {rule for rule, _, _ in expected} == {
            "velocity", "spam_reports", "inmail_response"
        }
        flag_records = [orjson.loads(m.value) for m in read_topic(settings, settings.flagged_topic)]
        published = [(r["rule"], r["sender_id"], r["window_start"]) for r in flag_records]
        assert len(published) == len(set(published)), "a flag was published twice"
        assert set(published) == expected
        flagged_gauge = {
            dict(labels)["reason"]: v for (name, labels), v in scraped.items()
            if name == "messaging_flagged_senders"
        }
        last_flags = Counter(rule for rule, _, start in expected if start == last)
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
            assert samples_of(record["samples"]) == stream_total
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
        assert processed_total(worker) == EVENTS

        # --- the aggregate's state records: each with its position, never going back --
        positions: dict[bytes, list[int]] = {}
        for message in read_topic(settings, settings.aggregate_state_topic):
            positions.setdefault(message.key, []).append(position_of(message.headers))
        assert positions and all(p >= 0 for ps in positions.values() for p in ps)
        assert all(ps == sorted(ps) for ps in positions.values())
    finally:
        assert worker.stop() == 0
