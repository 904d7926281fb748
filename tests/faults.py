"""Fault runs for the integration tests: two workers and a paced producer on a seeded
stream, a fault at a random point, and the verdict of the independent recount.

``FAULT_SEED`` replays a run's random points (each run prints the seed it used).
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from streams.kafka.io import close_client, ensure_topics
from streams.settings import Settings
from tests.harness import WorkerProcess, wait_until
from tests.integration.test_reliability import PacedProducer, check_run
from tests.pipeline import LOW_RISK_THRESHOLDS, encoded, simulated

EVENTS = 90_000  # 90 one-minute windows of event time
RATE = 4500  # events per wall second: a 20-second run


def late_events(workers: list[WorkerProcess]) -> dict[str, float]:
    """Events that missed their window, in the ingest or at the aggregate owners."""
    totals = {"messaging_late_events_total": 0.0, "messaging_aggregate_late_events": 0.0}
    for worker in workers:
        for (name, _), value in worker.scrape().items():
            if name in totals:
                totals[name] += value
    return totals


async def open_transactions(settings: Settings) -> dict[str, list[int]]:
    """The run's topics' partitions whose last stable offset is below the high watermark:
    held by a transaction not decided yet (or never to be: a hanging one)."""
    topics = [getattr(settings, name) for name in type(settings).model_fields
              if name.endswith("_topic")]
    options = settings.kafka_client_options()
    admin = AIOKafkaAdminClient(**options)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    tps = [TopicPartition(topic["topic"], partition["partition"])
           for topic in described if topic["error_code"] == 0
           for partition in topic["partitions"]]
    written = AIOKafkaConsumer(enable_auto_commit=False, **options)
    committed = AIOKafkaConsumer(enable_auto_commit=False, isolation_level="read_committed",
                                 **options)
    await written.start()
    await committed.start()
    try:
        high = await written.end_offsets(tps)
        stable = await committed.end_offsets(tps)
    finally:
        await close_client(written, "diagnosis")
        await close_client(committed, "diagnosis")
    held: dict[str, list[int]] = {}
    for tp in tps:
        if stable[tp] < high[tp]:
            held.setdefault(tp.topic, []).append(tp.partition)
    return held


@dataclass
class FaultRun:
    """Topics, the seeded events, two workers (``w0``, ``w1``) started, the producer not
    yet. ``stop()`` stops every worker by PID and returns their exit codes."""

    settings: Settings
    tmp_path: Path
    acks: int | str = 1
    seed: int = field(default_factory=lambda: int(os.environ.get("FAULT_SEED")
                                                  or random.randrange(1 << 30)))
    workers: list[WorkerProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        print(f"FAULT_SEED={self.seed}")
        # flags of every rule, compared with the recount across the fault
        self.settings = self.settings.model_copy(update=LOW_RISK_THRESHOLDS)
        self.rng = random.Random(self.seed)
        asyncio.run(ensure_topics(self.settings))
        self.events: list[dict[str, Any]] = simulated(EVENTS, seed=self.seed % 1000)
        self.producer = PacedProducer(self.settings, encoded(self.events), RATE, self.acks)
        self.workers = [self.worker(i).start() for i in range(2)]

    def worker(self, index: int, log_name: str | None = None) -> WorkerProcess:
        return WorkerProcess(self.settings, self.tmp_path / f"{log_name or f'w{index}'}.log",
                             worker_id=f"w{index}")

    def start_and_wait_for_the_fault_point(self) -> None:
        """Start producing; return at a random point 25-60 % into the run."""
        self.producer.start()
        at = self.rng.uniform(0.25, 0.6) * len(self.events)
        wait_until(lambda: self.producer.sent >= at, 60, "the fault's point in the run", 0.05)

    def assert_exact_and_nothing_early(self) -> None:
        """Every window and gauge equal the recount, none closed early, nobody exited."""
        self.producer.join_checked(timeout=180)
        try:
            check_run(self.settings, self.events, self.workers, crashed=True)
        except AssertionError as exc:  # say what else was off: late, dropped, crashed
            raise AssertionError(f"{exc}\n{self.diagnosis()}") from None
        assert late_events(self.workers) == {
            "messaging_late_events_total": 0.0, "messaging_aggregate_late_events": 0.0
        }, f"a window closed early (FAULT_SEED={self.seed})"
        for worker in self.workers:
            assert worker.running(), f"a worker exited: see {worker.log_path}"

    def diagnosis(self) -> str:
        """The seed, partitions a transaction still holds open, each worker's late events,
        and its log's warnings and errors."""
        lines = [f"FAULT_SEED={self.seed}"]
        try:
            held = asyncio.run(open_transactions(self.settings))
        except Exception as exc:  # noqa: BLE001 - the broker may be what failed
            held = {"(not known)": [repr(exc)]}
        lines.extend(f"a transaction still open on {topic} partitions {partitions}"
                     for topic, partitions in held.items())
        for worker in self.workers:
            try:
                late: Any = late_events([worker])
            except OSError as exc:  # a worker that exited or does not answer
                late = repr(exc)
            lines.append(f"{worker.log_path.name}: running={worker.running()} late={late}")
            text = worker.log_path.read_text(errors="replace") if worker.log_path.exists() else ""
            notable = [line for line in text.splitlines()
                       if "[WARNING]" in line or "[ERROR]" in line]
            lines.extend(f"  {line[:300]}" for line in notable[-15:])
        return "\n".join(lines)

    def stop(self) -> list[int]:
        return [worker.stop() for worker in self.workers]
