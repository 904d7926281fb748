"""Event time on a real broker: disorder within the allowed lateness changes nothing;
events later than that are counted as late and change no published window."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from streams.settings import Settings
from tests import reference
from tests.harness import WorkerProcess, wait_until
from tests.pipeline import (
    assert_windows_equal_recount,
    closed_windows,
    encoded,
    last_window_gauges,
    processed_total,
    produce,
    simulated,
    stored_events,
)

WINDOW = 60
LATENESS = 30
JITTER = 20.0  # < LATENESS: every event arrives at most 20 event-seconds "late"


def shuffle_within(events: list[dict[str, Any]], jitter: float, seed: int) -> list[dict[str, Any]]:
    """Reorder events by up to ``jitter`` event-seconds, keeping each conversation's order.

    (A conversation's events share a key and a producer, so Kafka keeps their order; it
    is the interleaving of different conversations that arrives out of order.)
    """
    rng = random.Random(seed)
    slots = sorted(range(len(events)), key=lambda i: events[i]["ts"] + rng.uniform(0, jitter))
    by_conversation: dict[str, list[int]] = defaultdict(list)
    for position, index in enumerate(slots):
        by_conversation[events[index]["conversation_id"]].append(position)
    out: list[dict[str, Any] | None] = [None] * len(events)
    for conversation, positions in by_conversation.items():
        own = [e for e in events if e["conversation_id"] == conversation]
        for position, event in zip(sorted(positions), own, strict=True):
            out[position] = event
    return [e for e in out if e is not None]


def late_events(first_ts: float, count: int) -> list[dict[str, Any]]:
    """Valid events from the run's first minute, to be sent after everything else."""
    return [
        {"event_id": f"late-{i}", "type": "message_read", "ts": first_ts + 1,
         "conversation_id": f"late-c-{i}", "schema_version": 1, "message_id": f"late-m-{i}",
         "reader_id": "m-000001", "platform": "web"}
        for i in range(count)
    ]


def test_disorder_within_lateness_is_invisible_and_later_events_are_only_counted(
    settings: Settings, tmp_path
) -> None:
    assert settings.allowed_lateness_seconds == LATENESS
    ordered = simulated(12_000, seed=11, members=4000)
    shuffled = shuffle_within(ordered, JITTER, seed=3)
    assert shuffled != ordered
    late = late_events(ordered[0]["ts"], 40)
    produce(settings, encoded(shuffled) + encoded(late))

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        wait_until(lambda: processed_total(worker) >= len(ordered), 120, "all events counted")
        partitions = stored_events(settings, shuffled)
        tallies = reference.recount(partitions, WINDOW)
        # the disorder is invisible: the same windows as the events in time order
        in_order = defaultdict(list)
        for event in ordered:
            in_order[0].append(event)
        assert _samples(tallies) == _samples(reference.recount(dict(in_order), WINDOW))

        by_window = closed_windows(settings, tallies, WINDOW)
        assert_windows_equal_recount(by_window, tallies, WINDOW)
        last = max(tallies)
        scraped = last_window_gauges([worker], last + WINDOW)
        assert scraped[("messaging_late_events_total", frozenset())] == len(late)
        assert processed_total(worker) == len(ordered)
    finally:
        assert worker.stop() == 0


def _samples(tallies: dict[int, Any]) -> dict[int, Any]:
    return {start: reference.samples(t, start + WINDOW) for start, t in tallies.items()}
