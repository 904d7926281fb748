"""Broker faults on a real broker: crashes (SIGKILL) and stalls (SIGSTOP/SIGCONT).

Two workers and a paced producer run a seeded stream; at a random point the broker
is killed and started again on the same ports and data after an outage, or stopped
and continued. Every closed window must then equal the independent recount of the
events topic, no window may close early (no aggregate-late or ingest-late event), a
window published twice must be identical, and no worker may exit.

``FAULT_SEED`` replays a run's random points (each test prints the seed it used).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from streams.kafka.io import ensure_topics
from streams.kafka.stage import STALLED_AFTER_SECONDS
from streams.settings import Settings
from tests.harness import WorkerProcess, wait_until
from tests.integration.test_reliability import PacedProducer, check_run
from tests.pipeline import encoded, simulated

pytestmark = pytest.mark.integration

EVENTS = 90_000  # 90 one-minute windows of event time
RATE = 4500  # events per wall second: a 20-second run
REPORTED_AFTER = STALLED_AFTER_SECONDS  # an outage is news once a batch waits this long


@dataclass(frozen=True)
class Fault:
    kind: str  # "kill" (SIGKILL, then a start on the same data) or "stall" (SIGSTOP)
    down: float  # wall seconds the broker is dead or frozen (a restart adds its start-up)
    kill_worker: bool = False  # also SIGKILL a worker while the broker is gone
    idle_timeout: float = 3.0  # the tests' IDLE_TIMEOUT_SECONDS
    session_timeout_ms: int = 10_000  # and SESSION_TIMEOUT_MS


# A killed broker takes 10-15 s to start again (JVM, log recovery), so the outage the
# workers see is that much longer than ``down``: the first case raises the idle and
# session timeouts above the whole outage, the others keep them far below it.
FAULTS = {
    "kill-shorter-than-idle-and-session": Fault(
        "kill", 2.0, idle_timeout=25.0, session_timeout_ms=25_000
    ),
    "kill-15s": Fault("kill", 15.0),
    "stall-20s": Fault("stall", 20.0),
    "stall-2s": Fault("stall", 2.0),
    "kill-broker-and-a-worker": Fault("kill", 8.0, kill_worker=True),
}


def by_stage(worker: WorkerProcess, metric: str) -> dict[str, float]:
    return {
        dict(labels)["stage"]: value for (name, labels), value in worker.scrape().items()
        if name == metric
    }


def outage_lines(worker: WorkerProcess) -> dict[str, int]:
    """The worker's own outage reports in its log, by stage (aiokafka's are not counted)."""
    text = worker.log_path.read_text(errors="replace")
    return {stage: text.count(f"] {stage} lost Kafka while") for stage in ("ingest", "risk")}


CLOSED = re.compile(rb"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] .* closed window ", re.MULTILINE)


def wait_around(logs: list[Path], instant: float) -> float:
    """The wall time between the last window close before ``instant`` and the first
    after it, over all workers' logs: what a fault at that instant cost in freshness
    (the outage, then the catch-up)."""
    closes = sorted(
        datetime.strptime(stamp.decode(), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for path in logs for stamp in CLOSED.findall(path.read_bytes())
    )
    return next((b - a for a, b in itertools.pairwise(closes) if a <= instant <= b), 0.0)


def late_events(workers: list[WorkerProcess]) -> dict[str, float]:
    """Events that missed their window, in the ingest or at the aggregate owners."""
    totals = {"messaging_late_events_total": 0.0, "messaging_aggregate_late_events": 0.0}
    for worker in workers:
        for (name, _), value in worker.scrape().items():
            if name in totals:
                totals[name] += value
    return totals


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=list(FAULTS))
def test_broker_fault_loses_nothing_and_closes_no_window_early(
    kafka_broker, settings: Settings, tmp_path, fault: Fault
) -> None:
    if kafka_broker is None:
        pytest.skip("KAFKA_BOOTSTRAP_SERVERS points at an external broker: not ours to break")
    seed = int(os.environ.get("FAULT_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    print(f"FAULT_SEED={seed}")
    settings = settings.model_copy(update={
        "idle_timeout_seconds": fault.idle_timeout,
        "session_timeout_ms": fault.session_timeout_ms,
    })
    asyncio.run(ensure_topics(settings))
    events = simulated(EVENTS, seed=seed % 1000)
    producer = PacedProducer(settings, encoded(events), rate=RATE)
    workers = [
        WorkerProcess(settings, tmp_path / f"w{i}.log", worker_id=f"w{i}").start()
        for i in range(2)
    ]
    try:
        producer.start()
        at = rng.uniform(0.25, 0.6) * len(events)
        wait_until(lambda: producer.sent >= at, 60, "the fault's point in the run", 0.05)
        if fault.kind == "kill":
            kafka_broker.kill()
        else:
            kafka_broker.pause()
        gone, gone_wall = time.monotonic(), time.time()
        witnesses = list(workers)  # the workers that see the whole outage
        if fault.kill_worker:
            time.sleep(rng.uniform(0, fault.down / 2))
            victim = rng.randrange(len(workers))
            workers[victim].kill()
            witnesses.remove(workers[victim])
            # restarted at once, as an orchestrator would: it must wait for the broker
            workers[victim] = WorkerProcess(
                settings, tmp_path / f"w{victim}-restarted.log", worker_id=f"w{victim}"
            ).start(wait=False)
        if fault.down >= REPORTED_AFTER + 2:
            time.sleep(max(0.0, gone + REPORTED_AFTER + 1 - time.monotonic()))
            for worker in witnesses:  # the outage shows while it lasts
                assert by_stage(worker, "messaging_kafka_outage_seconds")["ingest"] > 0
        time.sleep(max(0.0, gone + fault.down - time.monotonic()))
        if fault.kind == "kill":
            kafka_broker.start()
        else:
            kafka_broker.resume()
        back = time.monotonic()
        for worker in workers:
            worker.wait_started()
        producer.join_checked(timeout=180)
        check_run(settings, events, workers, crashed=True)
        assert late_events(workers) == {
            "messaging_late_events_total": 0.0, "messaging_aggregate_late_events": 0.0
        }, f"a window closed early (FAULT_SEED={seed})"
        for worker in workers:
            assert worker.running(), f"a worker exited: see {worker.log_path}"
            # told once per outage and stage, however many retries it took; and over
            outages = by_stage(worker, "messaging_kafka_outages_total")
            assert outage_lines(worker) == {k: int(v) for k, v in outages.items()}
            assert set(by_stage(worker, "messaging_kafka_outage_seconds").values()) == {0.0}
        if fault.down >= REPORTED_AFTER + 2:
            assert all(by_stage(w, "messaging_kafka_outages_total")["ingest"] for w in witnesses)
        waited = wait_around(sorted(tmp_path.glob("*.log")), gone_wall)
        print(f"{fault}: broker gone {back - gone:.1f} s (its own restart included), "
              f"windows waited {waited:.1f} s across it")
    finally:
        codes = [worker.stop() for worker in workers]
        if kafka_broker.process is None:  # a failed test leaves the session a broker
            kafka_broker.start()
        else:
            kafka_broker.resume()
    assert codes == [0, 0]
