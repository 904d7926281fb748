"""A restore against a changelog partition whose previous owner is still mid-commit.

A stage's owner that is stalled or cut off between sending a batch and ending its
transaction may commit that batch after the group gave the partition to another
worker. The new owner's restore must not end before that transaction is decided: read
up to the stable offset before it, its state would lack the batch, and the stage would
apply the same input again (CI saw windows counted one batch twice so, under broker
stalls and kills). Here a real broker holds a transaction open, as such an owner
leaves it, while a restore runs.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from streams.kafka.io import ensure_topics
from streams.kafka.stage import read_partitions
from streams.settings import Settings

pytestmark = pytest.mark.integration

PENDING_FOR_SECONDS = 2.0  # how long the test keeps the transaction undecided


async def _restore_around(
    settings: Settings, producer: AIOKafkaProducer, end: str
) -> list[bytes]:
    """Start a restore of partition 0 while ``producer`` has a transaction open, then
    end that transaction (``commit`` or ``abort``); return what the restore read."""
    read: list[bytes] = []
    restore = asyncio.create_task(read_partitions(
        settings.kafka_client_options(), settings.ingest_state_topic, [0],
        lambda _, message: read.append(message.value),
    ))
    await asyncio.sleep(PENDING_FOR_SECONDS)
    assert not restore.done(), f"the restore ended before the transaction did: {read}"
    await (producer.commit_transaction() if end == "commit" else producer.abort_transaction())
    await asyncio.wait_for(restore, timeout=30)
    return read


def test_a_restore_waits_for_the_previous_owners_pending_transaction(
    settings: Settings,
) -> None:
    async def scenario() -> None:
        await ensure_topics(settings)
        topic = settings.ingest_state_topic
        owner = AIOKafkaProducer(
            transactional_id=f"{settings.app_id}-previous-owner",
            **settings.kafka_client_options(),
        )
        await owner.start()
        try:
            async with owner.transaction():
                await owner.send_and_wait(topic, b"committed", key=b"k", partition=0)

            await owner.begin_transaction()
            await owner.send_and_wait(topic, b"committed late", key=b"k", partition=0)
            assert await _restore_around(settings, owner, "commit") == [
                b"committed", b"committed late",
            ]

            await owner.begin_transaction()
            await owner.send_and_wait(topic, b"aborted", key=b"k", partition=0)
            assert await _restore_around(settings, owner, "abort") == [
                b"committed", b"committed late",
            ]
        finally:
            await owner.stop()

    asyncio.run(scenario())
