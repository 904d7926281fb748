"""Faust's aiokafka transport, reading committed records only, committing durably.

- The partials topic is written in Kafka transactions; a reader at the default
  ``read_uncommitted`` would apply partials of aborted transactions and double-count
  after an ingest crash. Faust only reads committed data in its own exactly-once mode
  (which has open bugs and wants three brokers), so this transport asks for it directly.
- A partition assigned anew starts with no "read offset": Faust could keep a stale one
  from a rebalance and drop records it never processed (see
  :meth:`ReadCommittedConsumer.on_partitions_assigned`).
- Faust commits a source offset after ``producer.flush()``, so that the table changelog
  records of the events before it are in Kafka first. Its flush can return early (see
  :class:`DrainingProducerBuffer`); this transport's producer waits for all of them.

Registered under the URL scheme ``kafkarc://``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiokafka
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import FutureMessage

SCHEME = "kafkarc"


class ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this at start(); Faust offers no setting for it.
        consumer._isolation_level = "read_committed"
        return consumer


class ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def on_partitions_assigned(self, assigned: set[Any], generation_id: int = 0) -> None:
        """A newly assigned partition starts with nothing read in this generation.

        Faust drops any fetched record below a partition's ``_read_offset`` as read
        already. Its fetch loop records a message's offset as read even when a rebalance
        suspended the flow before the message was delivered, and when that happens
        after the revocation cleared the offset, the stale offset outlives it: the
        partition, fetched again from its committed offset, then loses every record
        below it, never processed (seen: a partials partition's first records, so two
        windows short of two segments, in the cluster test). The new generation's seek
        to the committed offsets sets what is read from there.
        """
        for tp in assigned:
            self._read_offset.pop(tp, None)
        await super().on_partitions_assigned(assigned, generation_id)


class DrainingProducerBuffer(ProducerBuffer):
    """Faust's buffer of ``send_soon`` messages (table changelog writes), with a flush
    that returns only once every message is in the aiokafka producer.

    Faust's own flush returns as soon as its queue is empty, while the message last
    taken off it may still be on its way into aiokafka (``send`` waits for the
    partition's previous batch to drain when that one is full, and one owner state is
    larger than a batch), and it gives up after 0.1 s without progress. The offset
    commit that follows then runs ahead of the changelog, and a crash in that gap
    loses the table update of a committed record: after a kill -9, a window missed
    one partial (the kill -9 test, now and then).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.in_flight = 0

    async def _send_pending(self, fut: FutureMessage) -> None:
        self.in_flight += 1
        try:
            await super()._send_pending(fut)
        finally:
            self.in_flight -= 1

    async def flush(self) -> None:
        while self.size or self.in_flight:
            # stopping: the message in flight still goes, the queued ones would not
            if self.state != "running" and not self.in_flight:
                raise RuntimeError("cannot flush: the producer buffer is not running")
            self.message_sent.clear()
            # a timeout only re-checks: the message may have gone before clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.message_sent.wait(), timeout=1.0)


class DrainingProducer(faust_aiokafka.Producer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # replaces the buffer before anything can use it: it starts with the producer
        self.buffer = DrainingProducerBuffer(loop=self.loop, beacon=self.beacon)
        self.buffer.app = self.app
        if self.threaded_producer is not None:
            self.buffer.threaded_producer = self.threaded_producer


class Transport(faust_aiokafka.Transport):
    Consumer = ReadCommittedConsumer
    Producer = DrainingProducer


drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
