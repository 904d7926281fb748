"""The Faust producer buffer's flush: Faust commits offsets right after it, so it must
not return while a table changelog message is still on its way to the producer."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.transport.producer import ProducerBuffer

from streams.kafka.faust_transport import DrainingProducerBuffer


class SlowChannel:
    """Stands in for the topic: handing a message to the producer takes a while, as
    when aiokafka waits for the partition's previous batch to drain."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.handed_over = 0

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(self.seconds)
        self.handed_over += 1


async def _start_with(buffer: ProducerBuffer, messages: int, seconds: float) -> SlowChannel:
    """Start ``buffer`` with ``messages`` queued, the first one already taken off."""
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
    channel = SlowChannel(seconds)
    await buffer.start()
    for _ in range(messages):
        buffer.put(SimpleNamespace(message=SimpleNamespace(channel=channel)))
    await asyncio.sleep(0)  # the buffer's task takes the first message off the queue
    return channel


async def _flush_with(buffer: ProducerBuffer, messages: int, seconds: float) -> int:
    """Queue ``messages``, flush, and return how many were handed over by then."""
    channel = await _start_with(buffer, messages, seconds)
    try:
        await buffer.flush()
        handed_over = channel.handed_over
        while channel.handed_over < messages:  # let the rest go before stopping
            await asyncio.sleep(0.05)
        return handed_over
    finally:
        await buffer.stop()


def test_flush_waits_for_the_message_taken_off_the_queue() -> None:
    # Faust's own buffer: the queue is empty, so it returns with the message in flight
    assert asyncio.run(_flush_with(ProducerBuffer(), 1, 0.3)) == 0
    assert asyncio.run(_flush_with(DrainingProducerBuffer(), 1, 0.3)) == 1


def test_flush_does_not_give_up_on_slow_messages() -> None:
    # Faust's own buffer returns after 0.1 s without a message handed over
    assert asyncio.run(_flush_with(ProducerBuffer(), 3, 0.15)) < 3
    assert asyncio.run(_flush_with(DrainingProducerBuffer(), 3, 0.15)) == 3


def test_stopping_lets_the_message_in_flight_go() -> None:
    async def stop_with_one_in_flight() -> int:
        buffer = DrainingProducerBuffer()
        channel = await _start_with(buffer, 1, 0.2)
        await buffer.stop()  # flushes first: must wait for it, not refuse
        return channel.handed_over

    assert asyncio.run(stop_with_one_in_flight()) == 1


def test_a_newly_assigned_partition_starts_with_nothing_read(monkeypatch) -> None:
    """A read offset left from a rebalance would make Faust drop the records below it
    when the partition is fetched again from its committed offset."""
    import faust
    from faust.transport.consumer import Consumer
    from faust.types import TP

    from streams.kafka import faust_transport

    seen: list[dict[TP, int | None]] = []

    async def faust_assignment(self: Any, assigned: set[TP], generation_id: int = 0) -> None:
        seen.append(dict(self._read_offset))  # what Faust's own assignment starts from

    monkeypatch.setattr(Consumer, "on_partitions_assigned", faust_assignment)

    async def run() -> None:
        app = faust.App("t-read-offset", broker=f"{faust_transport.SCHEME}://127.0.0.1:1",
                        store="memory://", web_enabled=False)
        consumer = app.consumer
        stale, kept = TP("t.partials", 3), TP("t.partials", 1)
        consumer._read_offset[stale] = 42  # recorded for a message never delivered
        consumer._read_offset[kept] = 7
        await consumer.on_partitions_assigned({stale}, generation_id=2)

    asyncio.run(run())
    assert seen == [{TP("t.partials", 1): 7}]


def test_a_partition_without_a_commit_is_read_again_from_its_beginning() -> None:
    """aiokafka leaves a partition without a commit where the last generation's fetches
    left it, past what the revocation discarded: it must start over instead."""
    import faust
    from faust.types import TP

    from streams.kafka import faust_transport

    committed = {TP("t.partials", 0): 12, TP("t.partials", 1): None, TP("t.partials", 2): 0}
    rewound: list[TP] = []

    class Thread:
        async def seek_to_committed(self) -> dict[TP, int | None]:
            return committed

        async def seek_to_beginning(self, *partitions: TP) -> None:
            rewound.extend(partitions)

    async def run() -> dict[TP, int | None]:
        app = faust.App("t-seek", broker=f"{faust_transport.SCHEME}://127.0.0.1:1",
                        store="memory://", web_enabled=False)
        consumer = app.consumer
        consumer._thread = Thread()
        return await consumer.seek_to_committed()

    assert asyncio.run(run()) == committed
    assert sorted(rewound) == [TP("t.partials", 1), TP("t.partials", 2)]


def test_the_livelock_check_skips_a_partition_without_a_position(monkeypatch) -> None:
    """Faust's livelock check asserted on a partition aiokafka had just assigned (no
    position yet) and crashed the worker; such a partition is skipped, others checked."""
    from aiokafka.consumer.subscription_state import SubscriptionState
    from aiokafka.structs import TopicPartition
    from faust.transport.drivers import aiokafka as faust_aiokafka

    from streams.kafka.faust_transport import ReadCommittedConsumerThread

    fresh, reading = TopicPartition("t", 0), TopicPartition("t", 1)

    async def assigned() -> SubscriptionState:  # aiokafka wants a running loop
        subscriptions = SubscriptionState()
        subscriptions.assign_from_user({fresh, reading})
        subscriptions.subscription.assignment.state_value(reading).seek(42)
        return subscriptions

    subscriptions = asyncio.run(assigned())
    checked: list[Any] = []
    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "verify_event_path",
                        lambda self, now, tp: checked.append(tp))
    thread = object.__new__(ReadCommittedConsumerThread)
    consumer = SimpleNamespace(_fetcher=SimpleNamespace(_subscriptions=subscriptions))
    thread._ensure_consumer = lambda: consumer  # type: ignore[method-assign]
    for tp in (fresh, reading):
        thread.verify_event_path(0.0, tp)
    assert checked == [reading]
