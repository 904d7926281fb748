"""run_producer and the CLI, writing JSON lines (no broker)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from itertools import islice, takewhile
from pathlib import Path
from typing import Any

import orjson
import pytest

from producers.cli import add_arguments, main, parse_start_ts
from producers.profile import SimulationProfile
from producers.run import ProduceReport, run_producer
from producers.simulator import Event, Simulator
from producers.sinks import JsonlSink
from streams.settings import Settings

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SETTINGS = Settings(producer_members=2000)


def read(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def produce(path: Path, **kwargs: Any) -> ProduceReport:
    options: dict[str, Any] = {
        "events": None,
        "duration": None,
        "rate": 0.0,
        "speed": 60.0,
        "seed": 1,
        "start_ts": START,
    }
    options.update(kwargs)
    return asyncio.run(run_producer(SETTINGS, sink=JsonlSink(path), **options))


def test_as_fast_as_possible_for_a_count(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    report = produce(path, events=5000)
    events = read(path)
    assert len(events) == report.events_sent == 5000
    assert report.first_ts == events[0]["ts"] >= START
    assert report.last_ts == events[-1]["ts"]
    assert report.events_per_second > 0 and not report.cancelled


def test_paced_run_keeps_event_time_at_speed_times_wall_time(tmp_path: Path) -> None:
    """The last event goes out when (its ts - start) / speed wall seconds have passed:
    a compressed day lasts exactly 86400 / speed, whatever the time of day does to the
    number of events (pacing by count made it last 7% longer, which misaligned every
    "same time yesterday" comparison)."""
    speed = 3600.0  # an hour per wall second: from midnight, the night's thin traffic
    report = produce(tmp_path / "out.jsonl", duration=1.0, rate=2000.0, speed=speed)
    assert report.last_ts is not None and report.cancelled is False
    event_seconds = report.last_ts - START
    assert 1.0 <= report.elapsed_seconds < 1.3  # ends at the duration
    # the last chunk went out when its first event was due, not before; a chunk of the
    # night's thin traffic spans more event time than the mean
    assert report.elapsed_seconds - 0.3 < event_seconds / speed < report.elapsed_seconds + 0.3


def test_duration_bounds_a_run(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    report = produce(path, duration=0.3, rate=1000.0)
    assert 0.28 <= report.elapsed_seconds < 1.0
    # 1000/s on the day's average; the run starts at midnight, when traffic is thinner
    assert 50 <= report.events_sent <= 400
    assert len(read(path)) == report.events_sent


def test_cancellation_flushes_and_reports(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"

    async def go() -> ProduceReport:
        task = asyncio.create_task(
            run_producer(
                SETTINGS,
                sink=JsonlSink(path),
                events=None,
                duration=None,
                rate=500.0,
                speed=60.0,
                seed=1,
                start_ts=START,
            )
        )
        await asyncio.sleep(0.2)
        task.cancel()
        return await task

    report = asyncio.run(go())
    assert report.cancelled
    assert report.events_sent == len(read(path)) > 0


def test_start_ts_defaults_to_the_clock_and_progress_is_reported(tmp_path: Path) -> None:
    seen: list[ProduceReport] = []
    sink = JsonlSink(tmp_path / "out.jsonl")
    report = asyncio.run(
        run_producer(
            SETTINGS,
            sink=sink,
            events=12_000,
            duration=None,
            rate=0.0,
            speed=60.0,
            seed=1,
            start_ts=None,
            progress=seen.append,
            clock=lambda: START,
        )
    )
    assert report.first_ts is not None and START <= report.first_ts < START + 60
    assert [r.events_sent for r in seen] == [5000, 10_000, 12_000]


def test_the_file_is_the_simulator_output(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    produce(path, events=3000, rate=20_000.0, seed=9)  # paced, in many chunks
    sim = Simulator(
        SimulationProfile(), seed=9, start_ts=START, rate=20_000.0, speed=60.0, members=2000
    )
    assert read(path) == list(islice(sim.events(), 3000))


class RecordingSink:
    """Keeps every chunk with the wall-clock time it was written at."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, list[Event]]] = []

    async def write_many(self, events: list[Event]) -> None:
        self.writes.append((time.time(), list(events)))

    async def close(self) -> None:
        pass


def test_then_live_replays_history_at_speed_then_keeps_to_the_wall_clock() -> None:
    """A minute of history at 60x takes 60 / 59 s to catch up with the wall clock; from
    then on each event goes out once the wall clock reaches its ts, never before. The
    events are the simulator's, as without --then-live: only their sending is paced."""
    sink, began = RecordingSink(), time.time()
    report = asyncio.run(run_producer(
        SETTINGS, sink=sink, events=None, duration=2.5, rate=2000.0, speed=60.0, seed=3,
        start_ts=began - 60.0, then_live=True,
    ))
    ended = time.time()
    sent = [(at, event["ts"]) for at, chunk in sink.writes for event in chunk]
    assert all(ts <= at for at, ts in sent)  # never ahead of the wall clock
    history = [(at, ts) for at, ts in sent if ts < began]
    # a minute at 2000/60 events per event second, fewer at night and while a fresh
    # simulation has no replies yet
    assert len(history) > 100
    assert history[-1][0] - began < 1.5  # at 60x: about a second, not a minute
    assert len(sent) > len(history)  # then live, for a second or more
    assert report.last_ts is not None and ended - 2.0 < report.last_ts <= ended
    simulator = Simulator(SimulationProfile(), seed=3, start_ts=began - 60.0, rate=2000.0,
                          speed=60.0, members=2000)
    assert [e for _, chunk in sink.writes for e in chunk] == list(
        islice(simulator.events(), len(sent))
    )


def test_then_live_holds_the_warmup_back_too() -> None:
    """A warmup reaching past now (a start in the future) waits for the wall clock."""
    sink, began = RecordingSink(), time.time()
    asyncio.run(run_producer(
        SETTINGS, sink=sink, events=None, duration=1.5, rate=2000.0, speed=60.0, seed=3,
        start_ts=began + 600.0, warmup=1200.0, then_live=True,
    ))
    sent = [(at, event["ts"]) for at, chunk in sink.writes for event in chunk]
    assert all(ts <= at for at, ts in sent)
    simulator = Simulator(SimulationProfile(), seed=3, start_ts=began - 600.0, rate=2000.0,
                          speed=60.0, members=2000)
    past = sum(1 for _ in takewhile(lambda e: e["ts"] < began, simulator.events()))
    assert past > 0 and sent[past - 1][0] < began + 0.5  # the past at once
    assert len(sent) > past  # then live


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser()
    add_arguments(result, Settings(producer_rate=123.0, events_topic="x.events"))
    return result


def test_cli_defaults_come_from_settings_and_help_names_the_env_vars() -> None:
    args = parser().parse_args([])
    assert (args.rate, args.topic, args.sink, args.events) == (123.0, "x.events", "kafka", None)
    text = parser().format_help()
    for env in ("PRODUCER_RATE", "PRODUCER_SPEED", "PRODUCER_SEED", "EVENTS_TOPIC"):
        assert env in text


def test_then_live_is_off_unless_asked_for_by_flag_or_setting() -> None:
    assert parser().parse_args([]).then_live is False
    assert parser().parse_args(["--then-live"]).then_live is True
    assert "PRODUCER_THEN_LIVE" in parser().format_help()
    live = argparse.ArgumentParser()
    add_arguments(live, Settings(producer_then_live=True))
    assert live.parse_args([]).then_live is True
    assert live.parse_args(["--no-then-live"]).then_live is False


def test_start_ts_accepts_epoch_and_iso() -> None:
    assert parse_start_ts("1767225600") == START
    assert parse_start_ts("2026-01-01T00:00:00") == START
    assert parse_start_ts("2026-01-01T01:00:00+01:00") == START
    with pytest.raises(argparse.ArgumentTypeError):
        parse_start_ts("yesterday")


def test_cli_main_writes_jsonl_and_logs_the_summary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cli.jsonl"
    args = parser().parse_args(
        [
            "--sink",
            "jsonl",
            "--output",
            str(path),
            "--events",
            "700",
            "--rate",
            "0",
            "--start-ts",
            "2026-01-01T00:00:00Z",
            "--members",
            "500",
        ]
    )
    with caplog.at_level(logging.INFO, logger="producers"):
        assert asyncio.run(main(args, SETTINGS)) == 0
    assert len(read(path)) == 700
    assert any(r.getMessage().startswith("produced 700 events in") for r in caplog.records)


def test_cli_diurnal_amplitude_shapes_the_day_and_is_checked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Amplitude 0: conversations start as often at 02:00 UTC (the trough) as at 14:00
    (the peak); at the default 0.6 the night's starts come 1.6/0.4 = 4 times apart."""

    def start_gap(hour: int, amplitude: str) -> float:
        """Mean event seconds between the first 1,000 conversation starts."""
        path = tmp_path / f"{hour}-{amplitude}.jsonl"
        args = parser().parse_args([
            "--sink", "jsonl", "--output", str(path), "--rate", "0", "--members", "500",
            "--events", "6000", "--start-ts", f"2026-01-01T{hour:02d}:00:00Z",
            "--diurnal-amplitude", amplitude,
        ])
        assert asyncio.run(main(args, SETTINGS)) == 0
        starts = [e["ts"] for e in read(path) if e.get("first_in_conversation")][:1000]
        assert len(starts) == 1000
        return (starts[-1] - starts[0]) / 999

    assert 0.85 < start_gap(2, "0") / start_gap(14, "0") < 1.15
    assert 3.0 < start_gap(2, "0.6") / start_gap(14, "0.6") < 5.0
    bad = parser().parse_args(["--sink", "jsonl", "--output", str(tmp_path / "x"),
                               "--diurnal-amplitude", "1.2"])
    with caplog.at_level(logging.ERROR, logger="producers"):
        assert asyncio.run(main(bad, SETTINGS)) == 2
    assert "--diurnal-amplitude must be in [0, 1)" in caplog.text
