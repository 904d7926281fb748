"""Small Kafka helpers shared by the worker, the producer and the tests.

- :func:`ensure_topics`: create the project's topics if missing (compacted state topic).
- :class:`BatchWriter`: aiokafka's batch API (``create_batch``/``send_batch``) with one
  open batch per topic-partition: far fewer Python calls per record than ``send()``.
  It works inside a transaction, because ``send_batch`` adds the partition to it.
- :func:`partition_for`: the default keyed partitioner (murmur2, as Java's), compiled
  (``native/src/lib.rs``): about 0.1 µs a key where murmur2 in Python took 1.
- :func:`close_client`: stop a client within a bound, whatever state the broker is in;
  :func:`being_cancelled` tells a cancellation of ours from one aiokafka lets out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, TopicAuthorizationFailedError, for_code
from aiokafka.structs import TopicPartition
from messaging_native import murmur2, partition_for  # noqa: F401 (compiled; re-exported)

from streams.kafka.access import KafkaAccessError, leader_topic
from streams.settings import Settings

# An aggregate owner's state snapshot grows with what is open, e.g. the windows of a
# backlog: its topic takes records up to this size. The risk stage's records are small
# now (per recruiter, chunked window increments below 1 MiB); its topic keeps this limit
# to read back the whole-state `snapshot` record earlier versions wrote (an upgrade).
STATE_RECORD_MAX_BYTES = 32 * 1024 * 1024
CLOSE_TIMEOUT_SECONDS = 5.0  # a client's stop() waits for the broker at most this long

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FetchedEnd:
    """What the broker last said of a partition in a fetch response: where its committed
    data ends (the last stable offset) and when it said so (wall seconds)."""

    position: int  # the consumer's: the next offset it hands out
    end: int
    at: float


def fetched_end(consumer: AIOKafkaConsumer, tp: TopicPartition) -> FetchedEnd | None:
    """The partition's position against the end its last fetch response gave, without a
    request and without waiting; None while the consumer has no position or no answer
    yet. aiokafka updates both on every error-free fetch response, empty ones included
    (a caught-up partition is long-polled about every ``fetch_max_wait_ms``)."""
    subscription = consumer._subscription.subscription
    assignment = subscription.assignment if subscription is not None else None
    state = assignment.state_value(tp) if assignment is not None else None
    if state is None or not state.has_valid_position:
        return None
    end, at = consumer.last_stable_offset(tp), consumer.last_poll_timestamp(tp)
    if end is None or end < 0 or at is None:
        return None
    return FetchedEnd(state.position, end, at / 1000)


def being_cancelled() -> bool:
    """Whether the running task itself has been asked to stop. A ``CancelledError`` can
    also be a library's own cancelled future let out (see :func:`close_client`)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def close_client(client: AIOKafkaConsumer | AIOKafkaProducer, owner: str) -> None:
    """Stop a client within a bound: a stalled or dead broker must not hold a restart,
    a restore or a stop up. What the client still had in flight is abandoned (the broker
    aborts an open transaction when the next incarnation fences it).

    aiokafka 0.14's ``Fetcher.close()`` cancels its pending fetch requests and awaits
    them unguarded, so a consumer stopped while a request waits out a retry (the broker
    just died) raises *their* ``CancelledError`` into the caller. Let out, it would end
    the caller's task as if the worker were stopping it: a stage would quietly stop
    without a word. Only a cancellation of the caller's own task is passed on.
    """
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
            await client.stop()
        return
    except asyncio.CancelledError:
        if being_cancelled():
            raise
        reason = "a cancelled request of its own"
    except Exception as exc:  # noqa: BLE001 - a broken client: nothing to save
        reason = type(exc).__name__
    log.info("%s: a Kafka client did not close cleanly (%s); abandoning it", owner, reason)
    await _abandon(client)


async def _abandon(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """Stop a client's background tasks and close its connections without waiting for
    the broker (its ``stop()`` failed or timed out: it waits for answers that may never
    come)."""
    tasks = []
    if isinstance(client, AIOKafkaProducer):
        tasks.append(client._sender.sender_task)
        connections = client.client
    else:
        coordinator, fetcher = client._coordinator, client._fetcher
        tasks.append(getattr(coordinator, "_coordination_task", None))
        tasks.append(getattr(coordinator, "_heartbeat_task", None))
        tasks.append(getattr(fetcher, "_fetch_task", None))
        connections = client._client
    for task in tasks:
        if task is not None and not task.done():
            task.cancel()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
            await connections.close()


async def ensure_topics(
    settings: Settings, extra: dict[str, int] | None = None, *, events_only: bool = False
) -> int:
    """Create missing topics (``events_only``: the producer's one); return the events
    topic's partition count. A user the broker does not allow to create a missing topic
    gets :class:`KafkaAccessError`: an admin creates them (``messaging-metrics topics``)."""
    replicas = settings.topic_replication_factor
    common = (
        {"min.insync.replicas": str(settings.topic_min_insync_replicas)}
        if settings.topic_min_insync_replicas else {}
    )

    def topic(name: str, partitions: int, **configs: str) -> NewTopic:
        return NewTopic(name, partitions, replicas, topic_configs={**common, **configs})

    compacted = {"cleanup.policy": "compact", "segment.ms": "600000"}
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [topic(settings.events_topic, settings.events_partitions)]
        wanted += [] if events_only else [
            topic(settings.dlq_topic, 1),
            topic(settings.partials_topic, settings.partials_partitions),
            topic(settings.metrics_topic, 1),
            topic(settings.activity_topic, settings.activity_partitions),
            topic(settings.flagged_topic, 1),
            topic(
                settings.risk_state_topic, settings.activity_partitions, **compacted,
                **{"max.message.bytes": str(STATE_RECORD_MAX_BYTES)},
            ),
            topic(
                settings.aggregate_state_topic, settings.partials_partitions, **compacted,
                **{"max.message.bytes": str(STATE_RECORD_MAX_BYTES)},
            ),
            topic(leader_topic(settings), 1),  # Faust's; made here so Faust needs no CREATE
        ]
        wanted += [topic(name, n) for name, n in (extra or {}).items()]
        missing = [t for t in wanted if t.name not in existing]
        await _create(admin, missing)
        described = await admin.describe_topics([settings.events_topic])
        events_partitions = len(described[0]["partitions"])
        if not events_only and settings.ingest_state_topic not in existing:
            # the ingest's state is partitioned exactly like its input
            await _create(admin, [topic(settings.ingest_state_topic, events_partitions,
                                        **compacted)])
        return events_partitions
    finally:
        await admin.close()


async def _create(admin: AIOKafkaAdminClient, topics: list[NewTopic]) -> None:
    """Create each topic; one that exists already is fine, any other refusal is raised
    (the broker answers per topic: an error code is not an exception by itself)."""
    for new in topics:
        try:
            response = await admin.create_topics([new])
        except TopicAlreadyExistsError:
            continue
        except TopicAuthorizationFailedError:
            raise _not_allowed_to_create(new.name) from None
        for name, code, *rest in response.topic_errors:
            if code == TopicAlreadyExistsError.errno:
                continue
            if code == TopicAuthorizationFailedError.errno:
                raise _not_allowed_to_create(name)
            if code:
                error = for_code(code)
                message = rest[0] if rest and rest[0] else error.description
                raise error(f"cannot create topic {name}: {message}")
            log.info("created topic %s (%d partitions, replication factor %d)", name,
                     new.num_partitions, new.replication_factor)


def _not_allowed_to_create(topic: str) -> KafkaAccessError:
    return KafkaAccessError(
        f"topic {topic} does not exist, and Kafka does not allow this user to create it: "
        "create the topics as an admin (messaging-metrics topics) or grant CREATE "
        "(README: Kafka ACLs)"
    )


class BatchWriter:
    """Accumulates records per topic-partition and ships full batches.

    ``send_batch`` waits for the partition's previous batch to drain, which is the
    back-pressure. Closed batches go out without waiting for the producer's linger.
    """

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._open: dict[tuple[str, int], Any] = {}
        self._opened_at: dict[tuple[str, int], float] = {}
        self._pending: list[asyncio.Future[Any]] = []
        self._shipped: list[tuple[tuple[str, int], int, asyncio.Future[Any]]] = []
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
            batch = self._new(slot)
        if batch.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
            await self._ship(slot)
            batch = self._new(slot)
            if batch.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
                raise ValueError(f"record of {len(value or b'')} bytes exceeds the batch size")
        self.records += 1

    def _new(self, slot: tuple[str, int]) -> Any:
        batch = self._open[slot] = self._producer.create_batch()
        self._opened_at[slot] = time.monotonic()
        return batch

    async def _ship(self, slot: tuple[str, int]) -> None:
        batch = self._open.pop(slot)
        del self._opened_at[slot]
        batch.close()
        future = await self._producer.send_batch(batch, slot[0], partition=slot[1])
        self._pending.append(future)
        self._shipped.append((slot, batch.record_count(), future))

    async def ship_older_than(self, seconds: float) -> None:
        """Send batches open longer than ``seconds``; raise the first delivery error."""
        deadline = time.monotonic() - seconds
        for slot in [s for s, opened in self._opened_at.items() if opened <= deadline]:
            await self._ship(slot)
        if len(self._pending) >= 64:
            still = []
            for future in self._pending:
                if future.done():
                    future.result()
                else:
                    still.append(future)
            self._pending = still

    async def flush(self) -> None:
        """Send every open batch and wait until the broker acknowledged all of them."""
        for slot in list(self._open):
            await self._ship(slot)
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)

    def last_offset(self, topic: str, partition: int) -> int | None:
        """After :meth:`flush`: the offset of the last record written to a partition."""
        last = None
        for slot, count, future in self._shipped:
            if slot == (topic, partition) and count:
                offset = future.result().offset + count - 1  # a batch's future: its base
                last = offset if last is None else max(last, offset)
        return last
