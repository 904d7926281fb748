"""Faust's aiokafka transport, reading committed records only, committing durably.

- The partials topic is written in Kafka transactions; a reader at the default
  ``read_uncommitted`` would apply partials of aborted transactions and double-count
  after an ingest crash. Faust only reads committed data in its own exactly-once mode
  (which has open bugs and wants three brokers), so this transport asks for it directly.
- A partition assigned anew starts with no "read offset": Faust could keep a stale one
  from a rebalance and drop records it never processed (see
  :meth:`ReadCommittedConsumer.on_partitions_assigned`).
- After a rebalance, a partition without a committed offset is read again from its
  beginning, not from where the previous generation's fetches left it (see
  :meth:`ReadCommittedConsumer.seek_to_committed`).
- Faust's livelock check must not crash on a partition whose position aiokafka has not
  set yet (see :meth:`ReadCommittedConsumerThread.verify_event_path`).
- Faust commits a source offset after ``producer.flush()``, so that the table changelog
  records of the events before it are in Kafka first. Its flush can return early (see
  :class:`DrainingProducerBuffer`); this transport's producer waits for all of them.
- An agent can hold back every offset commit until what it wrote for the records
  below it is in Kafka, and stop them all if a write failed (see
  :attr:`ReadCommittedConsumer.commit_barriers`): the aggregate's state records go
  out without a broker round trip each.

Registered under the URL scheme ``kafkarc://``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiokafka
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import FutureMessage

SCHEME = "kafkarc"

log = logging.getLogger(__name__)


class ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this at start(); Faust offers no setting for it.
        consumer._isolation_level = "read_committed"
        return consumer

    def verify_event_path(self, now: float, tp: Any) -> None:
        """Faust's livelock check (every 2.5 commit intervals) reads the position of each
        assigned partition, which aiokafka has not set yet for one assigned a moment ago
        (its offset is still being fetched or reset): the assertion behind it crashed
        the whole worker once, after a rebalance in CI. Such a partition has read
        nothing yet, so there is nothing to check."""
        consumer = self._ensure_consumer()
        subscription = consumer._fetcher._subscriptions.subscription
        assignment = None if subscription is None else subscription.assignment
        state = None if assignment is None else assignment.state_value(
            aiokafka.TopicPartition(tp.topic, tp.partition))
        if state is None or not state.has_valid_position:
            return None
        return super().verify_event_path(now, tp)


class ReadCommittedConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._warned: dict[Any, int] = {}  # partition -> read offset warned about
        # Awaited, in order, before every offset commit (timer, rebalance, stop); one
        # that raises stops the commit.
        self.commit_barriers: list[Callable[[], Awaitable[None]]] = []

    async def _commit_offsets(
        self, offsets: Mapping[Any, int], start_new_transaction: bool = True
    ) -> bool:
        for barrier in self.commit_barriers:
            await barrier()
        return await super()._commit_offsets(offsets, start_new_transaction)

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

    async def seek_to_committed(self) -> Mapping[Any, int | None]:
        """Seek every assigned partition to its committed offset, or to its beginning
        when it has none.

        aiokafka seeks only the partitions with a commit above 0 and leaves the others
        where the previous generation's fetches left them. A partition kept through a
        rebalance before its first commit (a worker joining seconds after the first)
        then resumes past the records the revocation took out of the agent's queue,
        unprocessed: lost. From the beginning is where a group without commits reads
        (``auto_offset_reset="earliest"``); the owner's marks skip what it has applied.
        """
        committed = await super().seek_to_committed()
        uncommitted = [tp for tp, offset in committed.items() if not offset or offset < 0]
        if uncommitted:
            log.info("no commit yet for %s: reading again from the beginning",
                     ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(uncommitted)))
            await self._thread.seek_to_beginning(*uncommitted)
        return committed

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        """Faust's fetch, saying so when Faust is about to drop a record as read already:
        with the fixes above it should not, and a drop of a record never processed is
        a silent loss (one warning per partition and read offset)."""
        read_offset = self._read_offset
        async for tp, message in super().getmany(timeout):
            read = read_offset[tp]
            if read is not None and message.offset < read and self._warned.get(tp) != read:
                self._warned[tp] = read
                log.warning("%s: records from offset %d are below the read offset %d: "
                            "Faust drops them as read", tp, message.offset, read)
            yield tp, message


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
