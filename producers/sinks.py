"""Where simulated events go: a JSON-lines file or a Kafka topic.

Both sinks have ``async write_many(events)`` and ``async close()`` (idempotent; it
flushes). The Kafka sink builds record batches itself (aiokafka's batch API), one open
batch per partition, keyed by ``conversation_id`` and partitioned exactly like the
Java client's and aiokafka's default partitioner (murmur2 of the key bytes), so a
conversation's events stay in order on one partition.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, Self

import orjson

from streams.kafka.io import BatchWriter, partition_for

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from streams.settings import Settings

Event = dict[str, Any]
RawRecord = tuple[bytes | None, bytes]


class Sink(Protocol):
    async def write_many(self, events: list[Event]) -> None: ...

    async def close(self) -> None: ...


class _ClosingContext:
    """``async with sink:`` closes (flushes) the sink on the way out."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class JsonlSink(_ClosingContext):
    """One orjson-encoded event per line."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        self.events_written = 0
        self._file: BinaryIO | None = open(path, "wb")  # noqa: SIM115 - closed in close()

    async def write_many(self, events: list[Event]) -> None:
        if self._file is None:
            raise RuntimeError("sink is closed")
        dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        self._file.write(b"".join([dumps(event, option=newline) for event in events]))
        self.events_written += len(events)

    async def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class KafkaSink(_ClosingContext):
    """Batching, keyed producer of events (and raw records) to one topic.

    Records go through :class:`streams.kafka.io.BatchWriter` (aiokafka's batch API,
    one open batch per partition): a batch is sent when full, when it has been open
    ``linger_ms`` (checked on every write), and on ``flush()``/``close()``. Records
    carry the wall-clock produce time as their Kafka timestamp: the event time is in
    the payload, and old event times must not trip the topic's retention.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        *,
        max_batch_bytes: int = 256 * 1024,
        linger_ms: float = 20.0,
        compression_type: str | None = None,
        acks: int | str = 1,
        producer: AIOKafkaProducer | None = None,
    ) -> None:
        self.topic = topic
        self.events_sent = 0
        self._settings = settings
        self._options: dict[str, Any] = {
            "client_id": "messaging-metrics-producer",
            "max_batch_size": max_batch_bytes,
            "max_request_size": max(1_048_576, 2 * max_batch_bytes),
            "compression_type": compression_type,
            "acks": acks,
        }
        self._linger = linger_ms / 1000.0
        self._producer = producer
        self._writer: BatchWriter | None = None
        self._started = False
        self._closed = False
        # the topic's partitions, learnt at start(); a conversation's events share a key
        self._partitions = 0
        self._round_robin = 0

    async def start(self) -> None:
        """Connect and learn the topic's partitions (also done by the first write)."""
        if self._started:
            return
        if self._closed:
            raise RuntimeError("sink is closed")
        if self._producer is None:
            from aiokafka import AIOKafkaProducer

            options = {**self._settings.kafka_client_options(), **self._options}
            self._producer = AIOKafkaProducer(**options)
        try:
            await self._producer.start()
            partitions = await self._producer.partitions_for(self.topic)
            if not partitions:
                raise RuntimeError(f"topic {self.topic!r} has no partitions")
        except BaseException:
            self._closed = True
            await self._producer.stop()
            raise
        self._partitions = len(partitions)
        self._writer = BatchWriter(self._producer)
        self._started = True

    async def write_many(self, events: list[Event]) -> None:
        dumps = orjson.dumps
        await self._write((e["conversation_id"].encode(), dumps(e)) for e in events)

    async def write_raw(self, records: Iterable[RawRecord]) -> None:
        """Send pre-encoded ``(key, value)`` records (e.g. deliberately malformed ones)."""
        await self._write(records)

    async def _write(self, records: Iterable[RawRecord]) -> None:
        if self._closed:
            raise RuntimeError("sink is closed")
        await self.start()
        assert self._writer is not None and self._partitions > 0
        add, topic, n = self._writer.add, self.topic, self._partitions
        for key, value in records:
            if key is None:
                partition = self._round_robin % n
                self._round_robin += 1
            else:
                partition = partition_for(key, n)
            await add(topic, partition, key, value)
            self.events_sent += 1
        await self._writer.ship_older_than(self._linger)

    async def flush(self) -> None:
        """Send every open batch and wait until all sent batches are acknowledged."""
        if self._writer is not None:
            await self._writer.flush()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._started:
                await self.flush()
        finally:
            if self._producer is not None and self._started:
                await self._producer.stop()
