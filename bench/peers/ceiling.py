"""(a) The ceiling: a bare aiokafka consumer, batch at a time.

``getmany`` + ``orjson.loads`` + one dict increment per
``(window start, type, platform, channel)``. No output, no commits, no state
changelog: the least any Python consumer of this topic can do.

    python -m bench.peers.ceiling --topic T --group G --events N --status FILE
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import orjson
from aiokafka import AIOKafkaConsumer

from bench.peers.progress import WINDOW_SECONDS, Progress, peer_parser
from streams.settings import Settings


async def run(args: argparse.Namespace) -> None:
    settings = Settings()
    progress = Progress(args.status, args.events)
    consumer = AIOKafkaConsumer(
        args.topic,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        # the same fetch sizes as the worker's ingest consumer
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
        **settings.kafka_client_options(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    counts: dict[tuple[int, str, str | None, str | None], int] = {}
    loads, size = orjson.loads, WINDOW_SECONDS
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=settings.ingest_max_batch)
            if batch:
                progress.begin()
            for messages in batch.values():
                for message in messages:
                    event = loads(message.value)
                    key = (
                        int(event["ts"] // size) * size, event["type"],
                        event.get("platform"), event.get("channel"),
                    )
                    counts[key] = counts.get(key, 0) + 1
                progress.add(len(messages))
            if progress.done_wall is not None and not progress.extra:
                progress.extra["cells"] = len(counts)
                progress.extra["counted"] = sum(counts.values())
                progress.write()
    finally:
        await consumer.stop()


def main() -> None:
    parser = peer_parser(__doc__)
    parser.add_argument("--group", required=True)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
