"""A live producer for the freshness and soak runs (a subprocess of the bench).

The simulator at a fixed wall rate into the events topic through
:class:`producers.sinks.KafkaSink`, driven by :func:`producers.run.run_producer`.
The sink is wrapped to remember, for every event-time window, the wall time at which
the chunk holding the window's last event was handed to the Kafka sink (the sink
sends it within its linger, ~one 50 ms tick). Written to ``--record`` at the end:
``{"windows": {"<window start>": wall, ...}, "events_sent": n, ...}``.

    python -m bench.live --topic T --rate 20000 --speed 60 --duration 30 --record FILE
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import orjson

from producers.run import run_producer
from producers.sinks import KafkaSink
from streams.settings import Settings


class RecordingSink:
    """Delegates to a sink; notes when each window's last event was handed over."""

    def __init__(self, sink: KafkaSink, window: int) -> None:
        self.sink = sink
        self.window = window
        self.last_sent: dict[int, float] = {}

    async def write_many(self, events: list[dict[str, Any]]) -> None:
        await self.sink.write_many(events)
        now, size, last = time.time(), self.window, self.last_sent
        previous = None
        for event in events:
            start = int(event["ts"] // size) * size
            if start != previous:
                last[start] = now
                previous = start

    async def close(self) -> None:
        await self.sink.close()


async def run(args: argparse.Namespace) -> None:
    settings = Settings()
    sink = RecordingSink(KafkaSink(settings, args.topic), settings.window_seconds)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    report = await run_producer(
        settings, sink=sink, events=None, duration=args.duration, rate=args.rate,
        speed=args.speed, seed=args.seed, start_ts=None,
    )
    Path(args.record).write_bytes(orjson.dumps({
        "windows": {str(start): wall for start, wall in sink.last_sent.items()},
        "events_sent": report.events_sent,
        "elapsed_seconds": report.elapsed_seconds,
        "events_per_second": report.events_per_second,
        "first_ts": report.first_ts,
        "last_ts": report.last_ts,
        "cancelled": report.cancelled,
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--speed", type=float, default=60.0)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--record", required=True)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
