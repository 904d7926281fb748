"""The ingest's CPU per event without a broker: what a code change to the hot path costs.

The throughput benchmark runs two ingest processes, the worker's main process and the
broker on the same two cores, and its numbers move by about ±8 % from run to run: a
change worth a few per cent cannot be seen there. This runs one events partition's
simulator events (the benchmark's seed and density; one partition of
``--partitions``) through :class:`~streams.ingest.stage.IngestStage` as the live stage
does, batch by batch (``process``, ``after_batch``, the store's commit), in one
process, with the Kafka writes only counted. It reports CPU seconds (``process_time``)
per event and where they went: the per-event loop, the batch's records, the store's
commit.

    python -m bench.ingest_offline                      # 250,000 events, 3 rounds
    python -m bench.ingest_offline --events 50000 --rounds 5 --json out.json
    python -m bench.ingest_offline --partitions 1 --events 2000000 --rounds 1 \
        --memory-every 250000     # RSS growth, event ids, RocksDB

The events are generated once per run (not measured); each round starts from a new
store and state. Compare the median of rounds, code against code, on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka.structs import TopicPartition

from bench.procs import status_kb
from producers.profile import SimulationProfile
from producers.simulator import Simulator
from streams import collector
from streams.ingest.stage import IngestStage
from streams.kafka.io import partition_for
from streams.settings import Settings


class Message:
    """What the stage reads of a fetched record."""

    __slots__ = ("key", "offset", "value")

    def __init__(self, key: bytes, value: bytes, offset: int) -> None:
        self.key, self.value, self.offset = key, value, offset


class CountingWriter:
    """The transaction's writer, minus Kafka: counts records, keeps nothing."""

    def __init__(self) -> None:
        self.records = 0

    async def add(self, topic: str, partition: int, key: bytes | None, value: bytes | None,
                  headers: list[tuple[str, bytes]] | None = None) -> None:
        self.records += 1

    def last_offset(self, topic: str, partition: int) -> int:
        return self.records


def simulated_partition(events: int, partitions: int, seed: int, rate: float,
                        speed: float, members: int) -> list[Message]:
    """``events`` simulator events of partition 0 (keyed by conversation, as produced)."""
    simulator = Simulator(SimulationProfile(), seed=seed, start_ts=time.time() - 7 * 86_400,
                          rate=rate, speed=speed, members=members)
    messages: list[Message] = []
    for event in simulator.events():
        key = event["conversation_id"].encode()
        if partition_for(key, partitions) == 0:
            messages.append(Message(key, orjson.dumps(event), len(messages)))
            if len(messages) == events:
                break
    return messages


class _Timed:
    """CPU seconds of the batch's records: from the per-event loop's end to the end of
    ``after_batch`` (the watermark marks)."""

    def __init__(self, stage: IngestStage) -> None:
        self.tail = 0.0
        self._loop_end = 0.0
        send_partials = stage._send_partials

        async def marked(*args: Any) -> None:  # the first thing after the per-event loop
            self._loop_end = time.process_time()
            await send_partials(*args)

        stage._send_partials = marked  # type: ignore[method-assign]

    def process_ended(self) -> None:
        self.tail += time.process_time() - self._loop_end


def _rss_mib() -> float:
    return status_kb(os.getpid(), "VmRSS") / 1024


async def one_round(
    messages: list[Message], batch: int, state_dir: Path, memory_every: int = 0,
) -> dict[str, float]:
    settings = Settings(state_dir=state_dir, kafka_bootstrap_servers="127.0.0.1:1")  # unused
    stage = IngestStage(settings, report=lambda report: None)
    state = stage.partitions[0] = stage.new_state(0)
    timed = _Timed(stage)
    tp = TopicPartition(settings.events_topic, 0)
    writer = CountingWriter()
    process = commit = 0.0
    rss_before, memory = _rss_mib(), []
    for start in range(0, len(messages), batch):
        began = time.process_time()
        await stage.process(tp, state, messages[start:start + batch], writer)
        await stage.after_batch(writer)
        timed.process_ended()  # the batch's records: its state and partials, and marks
        middle = time.process_time()
        stage.checkpoint(writer)
        process += middle - began
        commit += time.process_time() - middle
        done = min(start + batch, len(messages))
        if memory_every and (done // memory_every > start // memory_every or done == len(messages)):
            memory.append(_memory_sample(state, done, _rss_mib() - rss_before))
    stage.close_state(state)
    n = len(messages)
    return {
        "us_per_event": (process + commit) / n * 1e6,
        "loop_us": (process - timed.tail) / n * 1e6,
        "batch_records_us": timed.tail / n * 1e6,
        "store_commit_us": commit / n * 1e6,
        "records_written": writer.records,
        "memory": memory,
    }


def _memory_sample(state: Any, events: int, rss_growth_mib: float) -> dict[str, float]:
    """What the partition's state holds in memory now, and the process's RSS growth."""
    event_ids = state.core.event_ids
    sample = {"events": events, "rss_growth_mib": round(rss_growth_mib, 1),
              "event_ids": len(event_ids),
              "event_ids_kib": event_ids.memory_bytes() // 1024,
              "store_keys": state.store.count_estimate()}
    sample.update({f"rocksdb_{part}_mib": round(size / 2**20, 1)
                   for part, size in state.store.memory_bytes().items()})
    print("  after {events:,} events ({store_keys:,} keys): RSS +{rss_growth_mib} MiB; "
          "event ids {event_ids:,} ({event_ids_kib:,} KiB); RocksDB memtables {rocksdb_memtables_mib}, block cache "
          "{rocksdb_block_cache_mib}, table readers {rocksdb_table_readers_mib} MiB"
          .format(**sample), file=sys.stderr)
    return sample


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_offline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=250_000,
                        help="events of the one partition (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="default %(default)s")
    parser.add_argument("--batch", type=int, default=20_000,
                        help="events per batch (default %(default)s: the benchmark's, about)")
    parser.add_argument("--partitions", type=int, default=4,
                        help="the events topic's partitions: sets the density (default %(default)s)")
    parser.add_argument("--seed", type=int, default=42, help="simulator seed (the bench's)")
    parser.add_argument("--event-rate", type=float, default=20_000.0)
    parser.add_argument("--speed", type=float, default=60.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the rounds here")
    parser.add_argument("--memory-every", type=int, default=0, metavar="N",
                        help="every N events of each round, print its RSS growth and its "
                        "event ids and RocksDB (default: off)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.events < 1 or args.rounds < 1 or args.batch < 1:
        print("--events, --rounds and --batch must be at least 1", file=sys.stderr)
        return 2
    collector.tune_for_large_state()  # as the ingest processes run
    print(f"generating {args.events:,} events of one partition of {args.partitions} ...",
          file=sys.stderr)
    messages = simulated_partition(args.events, args.partitions, args.seed, args.event_rate,
                                   args.speed, Settings().producer_members)
    # the generated messages are Python objects the cycle collector would walk again and
    # again; the live stage's fetched records are aiokafka's C records, which it does not
    gc.collect()
    gc.freeze()
    rounds = []
    for number in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="mm-ingest-offline-") as state_dir:
            result = asyncio.run(
                one_round(messages, args.batch, Path(state_dir), args.memory_every)
            )
        rounds.append(result)
        print(f"round {number}: {result['us_per_event']:.2f} µs/event CPU (loop "
              f"{result['loop_us']:.2f}, batch records {result['batch_records_us']:.2f}, "
              f"store commit {result['store_commit_us']:.2f}); "
              f"{result['records_written']:,} records", file=sys.stderr)
    median = statistics.median(r["us_per_event"] for r in rounds)
    print(f"median of {len(rounds)} rounds: {median:.2f} µs/event CPU "
          f"({len(messages):,} events)")
    if args.json is not None:
        args.json.write_text(json.dumps({"events": len(messages), "args": vars(args) | {
            "json": str(args.json)}, "rounds": rounds, "median_us_per_event": median},
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
