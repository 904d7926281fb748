"""A three-broker KRaft cluster survives losing the leader of the events topic.

Three combined broker+controller nodes on loopback (one cluster for this module),
replication factor 3 and ``min.insync.replicas=2`` for every topic, internal ones
included. Two workers and a producer (acks=all) run a seeded stream; at a random point
the broker that leads most of the events topic's partitions is killed (SIGKILL) and
stays dead. Every closed window must equal the recount of the events topic, with no
window closed early and no worker exiting.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from deploy.local_kafka import LocalKafkaCluster
from streams.kafka.io import ensure_topics
from streams.settings import Settings
from tests.harness import WorkerProcess, wait_until
from tests.integration.test_broker_faults import late_events
from tests.integration.test_reliability import PacedProducer, check_run
from tests.pipeline import encoded, simulated

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

EVENTS = 90_000
RATE = 4500


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalKafkaCluster]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("KAFKA_BOOTSTRAP_SERVERS points at an external broker: no local cluster")
    with LocalKafkaCluster(Settings().cache_dir) as started:
        yield started


async def _describe(settings: Settings, topic: str) -> list[dict]:
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        return (await admin.describe_topics([topic]))[0]["partitions"]
    finally:
        await admin.close()


def test_killing_the_events_leader_loses_nothing(
    cluster: LocalKafkaCluster, settings: Settings, tmp_path
) -> None:
    settings = settings.model_copy(update={
        "kafka_bootstrap_servers": cluster.bootstrap_servers,
        "topic_replication_factor": 3, "topic_min_insync_replicas": 2,
    })
    seed = int(os.environ.get("FAULT_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    print(f"FAULT_SEED={seed}")
    asyncio.run(ensure_topics(settings))
    partitions = asyncio.run(_describe(settings, settings.events_topic))
    assert all(len(p["replicas"]) == 3 for p in partitions), partitions
    leader = Counter(p["leader"] for p in partitions).most_common(1)[0][0]
    events = simulated(EVENTS, seed=seed % 1000)
    producer = PacedProducer(settings, encoded(events), rate=RATE, acks="all")
    workers = [
        WorkerProcess(settings, tmp_path / f"w{i}.log", worker_id=f"w{i}").start()
        for i in range(2)
    ]
    try:
        producer.start()
        at = rng.uniform(0.25, 0.6) * len(events)
        wait_until(lambda: producer.sent >= at, 60, "the fault's point in the run", 0.05)
        cluster.node(leader).kill()
        producer.join_checked(timeout=180)
        moved = asyncio.run(_describe(settings, settings.events_topic))
        assert leader not in {p["leader"] for p in moved}, "the dead broker still leads"
        check_run(settings, events, workers, crashed=True)
        assert late_events(workers) == {
            "messaging_late_events_total": 0.0, "messaging_aggregate_late_events": 0.0
        }, f"a window closed early (FAULT_SEED={seed})"
        for worker in workers:
            assert worker.running(), f"a worker exited: see {worker.log_path}"
    finally:
        codes = [worker.stop() for worker in workers]
    assert codes == [0, 0]
