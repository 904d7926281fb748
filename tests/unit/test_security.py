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


# --- the grants, their documentation and the start-up check's pieces ------------------
def test_the_readme_grants_what_the_code_checks() -> None:
    from deploy import acl_docs

    assert acl_docs.main(["--check"]) == 0, "README's ACLs differ: python -m deploy.acl_docs"


def _granted_by(commands: list[list[str]]) -> set[tuple[str, str, str, str, str]]:
    """(principal, resource, name, operation, pattern) that kafka-acls commands add."""
    out = set()
    kinds = {"--topic": "topic", "--group": "group", "--transactional-id": "transactional-id"}
    for command in commands:
        options = [word for word in command[1:] if word != "--add"]  # the one flag
        pairs = list(zip(options[::2], options[1::2], strict=True))
        principal = dict(pairs)["--allow-principal"].removeprefix("User:")
        pattern = dict(pairs).get("--resource-pattern-type", "literal")
        ops = [value.upper() for option, value in pairs if option == "--operation"]
        names = [(kinds[option], value) for option, value in pairs if option in kinds]
        out |= {(principal, r, n, op, pattern) for r, n in names for op in ops}
    return out


def test_the_kafka_acls_commands_grant_exactly_the_grants() -> None:
    from streams.kafka.access import acl_commands, producer_grants, worker_grants

    settings = Settings(**SASL_SSL)
    for principal, grants in (("worker", worker_grants(settings)),
                              ("producer", producer_grants(settings))):
        expected = {(principal, g.resource, g.name, op, g.pattern)
                    for g in grants for op in g.operations}
        assert _granted_by(acl_commands(principal, grants)) == expected


def test_every_transactional_id_of_the_worker_falls_under_a_grant() -> None:
    from streams.kafka.access import transactional_ids, worker_grants

    settings = Settings(**SASL_SSL, ingest_processes=2)
    prefixes = [g.name for g in worker_grants(settings) if g.resource == "transactional-id"]
    ids = transactional_ids(settings)
    assert len(ids) == 4  # ingest, two ingest children, risk
    assert all(any(i.startswith(p) for p in prefixes) for i in ids)


def test_topic_grants_cover_every_topic_the_worker_makes() -> None:
    from streams.kafka.access import leader_topic, worker_grants

    settings = Settings(**SASL_SSL)
    granted = {g.name for g in worker_grants(settings) if g.resource == "topic"}
    made = {getattr(settings, f) for f in Settings.model_fields if f.endswith("_topic")}
    assert granted == made | {leader_topic(settings)}


def test_refusals_are_told_apart_from_outages() -> None:
    from aiokafka.errors import (
        GroupAuthorizationFailedError,
        KafkaConnectionError,
        RequestTimedOutError,
        TopicAuthorizationFailedError,
    )

    from streams.kafka.access import KafkaAccessError, describe_refusal

    settings = Settings(**SASL_SSL)
    wrapped = KafkaConnectionError("sender failed")
    wrapped.__cause__ = TopicAuthorizationFailedError("t")
    assert "user 'messaging'" in describe_refusal(GroupAuthorizationFailedError(), settings)
    assert describe_refusal(wrapped, settings) is not None
    assert describe_refusal(KafkaAccessError("the line"), settings) == "the line"
    assert describe_refusal(KafkaConnectionError(), settings) is None
    assert describe_refusal(RequestTimedOutError(), settings) is None


def test_the_authorized_operations_request_is_metadata_version_8() -> None:
    from streams.kafka.access import AuthorizedTopicsRequest

    request = AuthorizedTopicsRequest(["a", "b"]).prepare({3: (0, 13)})
    assert (request.API_KEY, request.API_VERSION) == (3, 8)
    # topics, no auto-creation, no cluster operations, the topics' operations
    assert request.encode() == b"\x00\x00\x00\x02\x00\x01a\x00\x01b\x00\x00\x01"


def test_a_copy_of_the_settings_connects_where_the_copy_says() -> None:
    settings = Settings(**SASL_SSL)
    assert settings.bootstrap == SASL_SSL["kafka_bootstrap_servers"]
    moved = settings.model_copy(update={"kafka_bootstrap_servers": "elsewhere:9093"})
    assert moved.bootstrap == "elsewhere:9093"
