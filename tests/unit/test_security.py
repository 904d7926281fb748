"""Kafka security settings reach every client; secrets are never printed."""

from __future__ import annotations

import asyncio
import ssl

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.app import _credentials
from streams.kafka.stage import TransactionalStage
from streams.settings import Settings

SASL_SSL = {
    "kafka_bootstrap_servers": "broker-1:9093,broker-2:9093",
    "kafka_security_protocol": "sasl_ssl",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "messaging",
    "kafka_sasl_password": "s3cret-pa55",
    "worker_id": "w",
}


def test_sasl_and_ssl_reach_aiokafka_clients() -> None:
    settings = Settings(**SASL_SSL)
    options = settings.kafka_client_options()

    async def build() -> None:
        consumer = AIOKafkaConsumer(**options)
        producer = AIOKafkaProducer(**options)
        for client in (consumer._client, producer.client):
            assert client._security_protocol == "SASL_SSL"
            assert client._sasl_mechanism == "SCRAM-SHA-512"
            assert client._sasl_plain_username == "messaging"
            assert client._sasl_plain_password == "s3cret-pa55"
            assert isinstance(client._ssl_context, ssl.SSLContext)
        assert sorted(h[:2] for h in producer.client.hosts) == [("broker-1", 9093), ("broker-2", 9093)]

    asyncio.run(build())


def test_the_batch_stages_and_faust_use_the_same_options() -> None:
    settings = Settings(**SASL_SSL)

    class Probe(TransactionalStage[object]):
        def new_state(self, partition: int) -> object:
            return object()

        def restore_record(self, state: object, key: object, value: object) -> None: ...

        async def process(self, *args: object) -> None: ...

    stage = Probe(settings, "in", "state", 10)
    assert stage._options["sasl_plain_password"] == "s3cret-pa55"
    credentials = _credentials(settings)
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.username == "messaging"
    assert credentials.password == "s3cret-pa55"


def test_the_password_is_never_printed() -> None:
    settings = Settings(**SASL_SSL)
    assert "s3cret-pa55" not in repr(settings)
    assert "s3cret-pa55" not in str(settings.model_dump())
