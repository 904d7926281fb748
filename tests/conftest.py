"""Shared fixtures: one Kafka broker per session, fresh topics and app id per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator

import pytest

# the shared helpers assert too: show the values when they fail, as in test modules
pytest.register_assert_rewrite("tests.harness", "tests.pipeline", "tests.reference", "tests.faults")

from deploy.kafka_security import BrokerSecurity
from deploy.local_kafka import LocalKafka
from streams.logs import limit_client_repeats
from streams.settings import Settings

# the tests' own clients (producers, read-backs) ride through broker faults too
limit_client_repeats()


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[LocalKafka | None]:
    """The session's local broker, or None when KAFKA_BOOTSTRAP_SERVERS names one."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield None
        return
    broker = LocalKafka(Settings().cache_dir).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """The session's secured broker (SASL_SSL, SCRAM users admin/worker/producer, ACLs
    enforced); none is granted anything yet."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("KAFKA_BOOTSTRAP_SERVERS points at an external broker: no local one")
    security = BrokerSecurity.create(tmp_path_factory.mktemp("tls"))
    broker = LocalKafka(Settings().cache_dir, security=security).start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: LocalKafka | None) -> str:
    """A real broker: KAFKA_BOOTSTRAP_SERVERS if set, else the local one."""
    if kafka_broker is None:
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    return kafka_broker.bootstrap_servers


@pytest.fixture
def base_settings(kafka_bootstrap: str, tmp_path) -> Iterator[Settings]:
    """Settings with throwaway topic names and app id, unique to this test.

    The test's topics (and the Faust changelogs of its app id) are deleted afterwards.
    """
    run = uuid.uuid4().hex[:8]
    test_settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        app_id=f"mm-test-{run}",
        worker_id="w0",
        events_topic=f"t{run}.events",
        dlq_topic=f"t{run}.events.dlq",
        partials_topic=f"t{run}.partials",
        ingest_state_topic=f"t{run}.ingest.state",
        metrics_topic=f"t{run}.metrics",
        activity_topic=f"t{run}.activity",
        risk_state_topic=f"t{run}.risk.state",
        aggregate_state_topic=f"t{run}.aggregate.state",
        flagged_topic=f"t{run}.flagged",
        idle_timeout_seconds=3.0,
        metrics_port=0,
        cache_dir=tmp_path / "cache",
    )
    yield test_settings
    asyncio.run(_delete_topics(test_settings, prefixes=(f"t{run}.", f"mm-test-{run}")))


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    return base_settings


async def _delete_topics(settings: Settings, prefixes: tuple[str, ...]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if t.startswith(prefixes)]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()
