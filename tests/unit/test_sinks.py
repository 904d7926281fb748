"""Sinks without a broker: the JSONL file, the partitioner, the Kafka sink's batching."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from producers.profile import SimulationProfile
from producers.simulator import Simulator
from producers.sinks import JsonlSink, KafkaSink
from streams.kafka.io import murmur2, partition_for
from streams.settings import Settings


def sample_events(n: int) -> list[dict[str, Any]]:
    sim = Simulator(
        SimulationProfile(), seed=3, start_ts=1_767_225_600.0, rate=500, speed=60, members=1000
    )
    return list(islice(sim.events(), n))


def test_jsonl_sink_round_trip(tmp_path: Path) -> None:
    events = sample_events(3000)
    path = tmp_path / "events.jsonl"

    async def write() -> None:
        async with JsonlSink(path) as sink:
            await sink.write_many(events[:1000])
            await sink.write_many(events[1000:])
        await sink.close()  # idempotent
        assert sink.events_written == len(events)

    asyncio.run(write())
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == events


def test_murmur2_matches_aiokafka_for_every_tail_length() -> None:
    rng = random.Random(5)
    for length in range(41):
        for _ in range(20):
            data = rng.randbytes(length)
            assert murmur2(data) == aiokafka_murmur2(data), data


def test_partition_matches_the_default_partitioner() -> None:
    partitioner = DefaultPartitioner()
    keys = [e["conversation_id"].encode() for e in sample_events(2000)]
    keys += [b"", b"a", b"ab", b"abc", "conversation-é".encode(), b"\xff" * 9]
    for n in (1, 2, 3, 4, 6, 12, 48):
        partitions = list(range(n))
        for key in keys:
            assert partition_for(key, len(partitions)) == partitioner(key, partitions, partitions)
            if key != b"\xff" * 9:  # text: its UTF-8 bytes' partition
                assert partition_for(key.decode(), n) == partition_for(key, n)
    with pytest.raises(TypeError):
        partition_for(42, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no partitions"):
        partition_for(b"a", 0)


class FakeProducer:
    """The slice of AIOKafkaProducer the sink uses, with aiokafka's real BatchBuilder."""

    def __init__(self, partitions: int = 4, batch_bytes: int = 4096) -> None:
        self.partitions, self.batch_bytes = partitions, batch_bytes
        self.sent: list[tuple[str, int, list[tuple[bytes | None, bytes]]]] = []
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.partitions))

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_bytes, 0)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> Any:
        assert batch.closed()
        records = MemoryRecords(bytes(batch._build())).next_batch()
        self.sent.append((topic, partition, [(r.key, r.value) for r in records]))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def run_sink(fake: FakeProducer, events: list[dict[str, Any]], **options: Any) -> KafkaSink:
    async def go() -> KafkaSink:
        sink = KafkaSink(Settings(), "t.events", producer=fake, **options)
        for start in range(0, len(events), 500):
            await sink.write_many(events[start : start + 500])
        await sink.write_raw([(None, b"not json"), (b"k", b"{")])
        await sink.close()
        await sink.close()
        return sink

    return asyncio.run(go())


def test_kafka_sink_batches_by_partition_in_order() -> None:
    events = sample_events(5000)
    fake = FakeProducer(partitions=4, batch_bytes=4096)
    sink = run_sink(fake, events, linger_ms=60_000)
    assert fake.started and fake.stopped
    assert sink.events_sent == len(events) + 2
    per_partition: dict[int, list[bytes]] = defaultdict(list)
    for topic, partition, records in fake.sent:
        assert topic == "t.events"
        assert records
        for key, value in records:
            if key is not None and value.startswith(b'{"'):
                assert partition == partition_for(key, 4)
                per_partition[partition].append(value)
    assert set(per_partition) == {0, 1, 2, 3}
    # full batches went out before close(): more batches than partitions
    assert len(fake.sent) > 4 * 4
    for partition, values in per_partition.items():
        expected = [
            orjson.dumps(e)
            for e in events
            if partition_for(e["conversation_id"].encode(), 4) == partition
        ]
        assert values == expected  # nothing lost, duplicated or reordered
    raw = [r for _, _, records in fake.sent for r in records if not r[1].startswith(b'{"')]
    assert sorted(raw, key=repr) == sorted([(None, b"not json"), (b"k", b"{")], key=repr)


def test_kafka_sink_sends_lingering_batches_on_the_next_write() -> None:
    fake = FakeProducer(partitions=2, batch_bytes=1_000_000)
    run_sink(fake, sample_events(1000), linger_ms=0)
    assert len(fake.sent) >= 4  # one per partition per write, never waiting to fill


def test_kafka_sink_refuses_writes_after_close() -> None:
    async def go() -> None:
        sink = KafkaSink(Settings(), "t", producer=FakeProducer())
        await sink.close()
        with pytest.raises(RuntimeError):
            await sink.write_many(sample_events(1))

    asyncio.run(go())
