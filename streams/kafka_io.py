"""Small Kafka helpers shared by the worker, the producer and the tests.

- :func:`ensure_topics`: create the project's topics if missing (compacted state topic).
- :class:`BatchWriter`: aiokafka's batch API (``create_batch``/``send_batch``) with one
  open batch per topic-partition: far fewer Python calls per record than ``send()``.
  It works inside a transaction, because ``send_batch`` adds the partition to it.
- :func:`partition_for`: the default keyed partitioner (murmur2, as Java's).
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from streams.settings import Settings

log = logging.getLogger(__name__)


def partition_for(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions


async def ensure_topics(settings: Settings, extra: dict[str, int] | None = None) -> int:
    """Create missing topics; return the events topic's partition count."""
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(settings.events_topic, settings.events_partitions, 1),
            NewTopic(settings.dlq_topic, 1, 1),
            NewTopic(settings.partials_topic, settings.partials_partitions, 1),
            NewTopic(settings.metrics_topic, 1, 1),
        ]
        wanted += [NewTopic(name, n, 1) for name, n in (extra or {}).items()]
        missing = [t for t in wanted if t.name not in existing]
        await _create(admin, missing)
        described = await admin.describe_topics([settings.events_topic])
        events_partitions = len(described[0]["partitions"])
        if settings.ingest_state_topic not in existing:
            # the ingest's state is partitioned exactly like its input
            state = NewTopic(
                settings.ingest_state_topic, events_partitions, 1,
                topic_configs={"cleanup.policy": "compact", "segment.ms": "600000"},
            )
            await _create(admin, [state])
        return events_partitions
    finally:
        await admin.close()


async def _create(admin: AIOKafkaAdminClient, topics: list[NewTopic]) -> None:
    for topic in topics:
        try:
            await admin.create_topics([topic])
            log.info("created topic %s (%d partitions)", topic.name, topic.num_partitions)
        except TopicAlreadyExistsError:
            pass


class BatchWriter:
    """Accumulates records per topic-partition and ships full batches."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._open: dict[tuple[str, int], Any] = {}
        self._pending: list[Any] = []
        self.records = 0

    async def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        slot = (topic, partition)
        batch = self._open.get(slot)
        if batch is None:
            batch = self._open[slot] = self._producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
            await self._ship(slot, batch)
            batch = self._open[slot] = self._producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
                raise ValueError(f"record of {len(value or b'')} bytes exceeds the batch size")
        self.records += 1

    async def _ship(self, slot: tuple[str, int], batch: Any) -> None:
        self._pending.append(await self._producer.send_batch(batch, slot[0], partition=slot[1]))

    async def flush(self) -> None:
        """Send every open batch and wait until the broker acknowledged all of them."""
        for slot, batch in self._open.items():
            if batch.record_count():
                await self._ship(slot, batch)
        self._open.clear()
        pending, self._pending = self._pending, []
        for future in pending:
            await future
