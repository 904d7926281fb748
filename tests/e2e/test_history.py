"""Prometheus' history is exactly what the workers computed: every window on
``messaging.metrics`` lands in Prometheus once, whole (all its owners summed), at its
event-time end; a repeated write changes nothing. Two workers, both killed (SIGKILL)
at a random point midway and restarted after a pause, the simulator replaying the past at 30x, a real
Prometheus scraping both workers.

It also measures what the live gauges give for the same run (the issue's "before"):
the share of instants at which the two workers' gauges came from different windows,
and the windows never seen whole at any instant.
"""

from __future__ import annotations

import asyncio
import math
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest

from deploy.local_kafka import free_port
from deploy.local_monitoring import LocalMonitoring, TimeCompression
from streams.history.assembly import Assembly, event_time_name
from streams.history.remote_write import RemoteWriteFailed, RemoteWriter
from streams.kafka.io import ensure_topics
from streams.settings import Settings
from streams.windows import window_end
from tests.e2e.conftest import WebhookReceiver
from tests.harness import ROOT, WorkerProcess, read_topic, settings_env, wait_until
from tests.pipeline import sum_owners

pytestmark = pytest.mark.e2e

WINDOW = 60
SPEED = 30.0  # event seconds per wall second: a window closes every 2 wall seconds
RATE = 300  # events per wall second
RUN = 60.0  # wall seconds of production
DOWN = 20.0  # wall seconds both workers are down, midway
Key = tuple[str, frozenset[tuple[str, str]], int]  # series name, labels, timestamp (ms)


def test_every_window_lands_once_whole_at_its_end(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"window_seconds": WINDOW})
    asyncio.run(ensure_topics(settings))
    prometheus_port = free_port()
    remote_write = f"http://127.0.0.1:{prometheus_port}/api/v1/write"
    workers = [
        WorkerProcess(settings.model_copy(update={"worker_id": f"w{i}"}),
                      tmp_path / f"worker{i}.log", history_remote_write_url=remote_write)
        for i in range(2)
    ]
    receiver = WebhookReceiver()
    receiver.thread.start()
    (tmp_path / "monitoring").mkdir()
    monitoring = LocalMonitoring(
        [f"127.0.0.1:{w.port}" for w in workers], receiver.url,
        TimeCompression(scrape_interval="1s"), workdir=tmp_path / "monitoring",
        prometheus_port=prometheus_port,
    )
    producer: subprocess.Popen[bytes] | None = None
    try:
        monitoring.start()
        for worker in workers:
            worker.start()
        # ten event minutes before an hour's end, over an hour ago: the run closes that
        # hour, and no window ends in the future
        start_ts = math.floor(time.time() / 3600) * 3600 - 3600 - 600
        began = time.time()
        with open(tmp_path / "producer.log", "ab") as out:
            producer = subprocess.Popen(
                [sys.executable, "-m", "streams", "produce", "--rate", str(RATE),
                 "--speed", str(SPEED), "--start-ts", str(start_ts), "--warmup", "0",
                 "--duration", str(RUN), "--seed", "7"],
                env=settings_env(settings), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )
        time.sleep(RUN * random.uniform(0.3, 0.7))  # SIGKILL at a random point
        for worker in workers:
            worker.kill()
        time.sleep(DOWN)
        for worker in workers:
            worker.start()
        assert producer.wait(RUN + 60) == 0
        newest = max(orjson.loads(m.value)["ts"]
                     for m in read_topic(settings, settings.events_topic))
        last_end = window_end(newest, WINDOW)  # closes once the input is idle
        metrics = wait_until(lambda: _history_complete(settings, workers, last_end), 180,
                             f"every window up to {last_end} in the history", interval=2.0)
        ended = time.time()

        expected = _expected(metrics)
        stored = _stored(monitoring, ended - start_ts + 600)
        minutes = {k[2] for k in expected if not _rollup(k[0])}
        hours = {k[2] for k in expected if "_hourly_" in k[0]}
        assert len(minutes) >= RUN * SPEED / WINDOW - 2 and hours, (len(minutes), hours)
        _assert_same(stored, expected)

        # the same windows again, assembled afresh: nothing changes (compared below; a
        # different value would not always be refused by Prometheus out of order)
        assembly = Assembly(settings.partials_partitions)
        for offset, message in enumerate(metrics):
            assembly.add(orjson.loads(message.value), offset)
        windows, _ = assembly.complete()
        assert len(windows) == len(minutes) + len(hours) + _days(expected)
        asyncio.run(_write_again(remote_write, windows))
        _assert_same(_stored(monitoring, ended - start_ts + 600), expected)
        # an endpoint that is no receiver (a wrong path: 404) is a failure to retry, not a
        # refusal of the samples to skip past
        with pytest.raises(RemoteWriteFailed):
            asyncio.run(_write_again(f"{monitoring.prometheus_url}/api/v1/no-receiver",
                                     windows[:1]))

        mixed, whole = _live_gauges(monitoring, began, ended, minutes)
        print(f"history: {len(minutes)} minute windows and {len(hours)} hours, every one "
              f"whole, once, at its end. Live gauges over the same run: {mixed:.0%} of "
              f"1-s instants mixed two windows; {len(minutes) - whole} of {len(minutes)} "
              f"windows never seen whole")
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
            producer.wait()
        for worker in workers:
            worker.stop()
        monitoring.stop()
        receiver.server.shutdown()
        receiver.server.server_close()


def _history_complete(settings: Settings, workers: list[WorkerProcess],
                      last_end: int) -> list[Any] | None:
    """The metrics topic, once the history is written through the window of the newest
    event (the last windows close when the input has been idle IDLE_TIMEOUT_SECONDS)."""
    written = max(w.scrape().get(("messaging_history_written_through_timestamp_seconds",
                                  frozenset()), 0.0) for w in workers)
    return read_topic(settings, settings.metrics_topic) if written >= last_end else None


def _rollup(name: str) -> bool:
    return any(f"_{period}_" in name for period in ("hourly", "daily", "weekly", "monthly"))


def _days(expected: dict[Key, float]) -> int:
    return len({k[2] for k in expected if "_daily_" in k[0]})


def _expected(metrics: list[Any]) -> dict[Key, float]:
    """Every window on the topic, its owners summed (a repeated record, identical, once)."""
    by_window: dict[tuple[str, int], dict[int, dict[str, Any]]] = defaultdict(dict)
    for message in metrics:
        record = orjson.loads(message.value)
        if record["kind"] != "window":
            continue
        owners = by_window[(record["resolution"], record["window_end"])]
        assert owners.setdefault(record["owner"], record) == record, "a repeat that differs"
    expected: dict[Key, float] = {}
    for (_, end), owners in by_window.items():
        for (name, labels), value in sum_owners(list(owners.values())).items():
            if "window_end_timestamp" not in name:
                expected[(event_time_name(name), labels, end * 1000)] = value
    return expected


def _stored(monitoring: LocalMonitoring, seconds: float) -> dict[Key, float]:
    """Every event-time sample Prometheus holds: each series' raw samples."""
    stored: dict[Key, float] = {}
    for series in monitoring.query(f'{{__name__=~"messaging_eventtime_.+"}}[{seconds:.0f}s]'):
        labels = dict(series["metric"])
        name = labels.pop("__name__")
        for at, value in series["values"]:
            stored[(name, frozenset(labels.items()), round(float(at) * 1000))] = float(value)
    return stored


def _assert_same(stored: dict[Key, float], expected: dict[Key, float]) -> None:
    missing = sorted({k[2] // 1000 for k in expected.keys() - stored.keys()})
    extra = sorted({k[2] // 1000 for k in stored.keys() - expected.keys()})
    wrong = sorted((k[0], k[2] // 1000, expected[k], stored[k])
                   for k in expected.keys() & stored.keys() if expected[k] != stored[k])
    assert (missing, extra, wrong[:10]) == ([], [], [])
    assert len(stored) == len(expected)


async def _write_again(url: str, windows: list[Any]) -> None:
    writer = RemoteWriter(url)
    try:
        for window in windows:
            await writer.write(window.series())
    finally:
        await writer.close()


def _live_gauges(monitoring: LocalMonitoring, began: float, ended: float,
                 minutes: set[int]) -> tuple[float, int]:
    """At 1-s steps over the run: the share of instants at which the workers' last-window
    gauges came from different windows, and how many windows were ever shown by every
    worker at once (a cross-worker sum() of them whole)."""
    result = monitoring.query_range("messaging_window_end_timestamp_seconds", began, ended, 1)
    by_instant: dict[float, list[float]] = defaultdict(list)
    for series in result:
        for at, value in series["values"]:
            by_instant[float(at)].append(float(value))
    both = [values for values in by_instant.values() if len(values) == len(result) > 1]
    mixed = sum(1 for values in both if len(set(values)) > 1) / max(1, len(both))
    whole = {values[0] * 1000 for values in both if len(set(values)) == 1}
    return mixed, len(whole & minutes)
