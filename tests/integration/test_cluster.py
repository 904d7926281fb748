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
from collections import Counter
from collections.abc import Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from deploy.local_kafka import LocalKafkaCluster
from streams.settings import Settings
from tests.faults import FaultRun

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


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
    run = FaultRun(settings.model_copy(update={
        "kafka_bootstrap_servers": cluster.bootstrap_servers,
        "topic_replication_factor": 3, "topic_min_insync_replicas": 2,
    }), tmp_path, acks="all")
    try:
        partitions = asyncio.run(_describe(run.settings, run.settings.events_topic))
        assert all(len(p["replicas"]) == 3 for p in partitions), partitions
        leader = Counter(p["leader"] for p in partitions).most_common(1)[0][0]
        run.start_and_wait_for_the_fault_point()
        cluster.node(leader).kill()
        run.assert_exact_and_nothing_early()
        moved = asyncio.run(_describe(run.settings, run.settings.events_topic))
        assert leader not in {p["leader"] for p in moved}, "the dead broker still leads"
    finally:
        codes = run.stop()
    assert codes == [0, 0]
