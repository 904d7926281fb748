"""(b) Naive Faust: one windowed-table update per event.

A faust-streaming app (memory store, its own app id, the stock ``kafka://``
transport) with one agent over the raw JSON events and a table
``app.Table("counts", default=int).tumbling(60, expires=...)`` made relative to the
event's ``ts`` by a callable (``.relative_to(lambda event: event.value["ts"])``: the
same thing ``relative_to_field`` does for a ``faust.Record``, without building a
record per event). Key ``f"{type}|{platform}|{channel}"``, ``table[key] += 1`` per
event, which also writes one changelog record per event. No ``group_by``: the table is
not co-partitioned with its key, which is only correct with one worker (as here).

    python -m bench.peers.faust_naive --topic T --app-id A --events N --status FILE \
        --datadir DIR
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from typing import Any

import faust

from bench.peers.progress import WINDOW_SECONDS, Progress, peer_parser, segment_key
from streams.settings import Settings


def build(args: argparse.Namespace) -> faust.App:
    settings = Settings()
    credentials: Any = None
    if settings.kafka_security_protocol != "PLAINTEXT":
        from streams.app import _credentials

        credentials = _credentials(settings)
    app = faust.App(
        args.app_id,
        broker=[f"kafka://{host}" for host in settings.bootstrap.split(",")],
        broker_credentials=credentials,
        store="memory://",
        datadir=args.datadir,
        web_enabled=False,
        topic_partitions=args.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        # Faust's default 0 sends the changelog nearly one record per request
        **({"producer_linger": args.producer_linger} if args.producer_linger else {}),
    )
    topic = app.topic(args.topic, key_serializer="raw", value_serializer="json")
    counts = (
        app.Table("counts", default=int, partitions=args.partitions)
        .tumbling(WINDOW_SECONDS, expires=timedelta(days=7))
        .relative_to(lambda event: event.value["ts"])
    )
    progress = Progress(args.status, args.events)

    @app.agent(topic, name="count")
    async def count(stream: faust.StreamT) -> None:
        async for event in stream:
            counts[segment_key(event)] += 1
            progress.add()

    @app.timer(0.2)
    async def report() -> None:
        if progress.first_wall is not None:
            progress.write()

    return app


def main() -> None:
    parser = peer_parser(__doc__)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--datadir", required=True)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--producer-linger", type=float, default=None,
                        help="Faust's producer_linger in seconds (default: Faust's, 0)")
    args = parser.parse_args()
    app = build(args)
    sys.argv = [sys.argv[0]]  # faust.Worker reads the command line
    # below WARN, as the project's worker runs: at WARN or above faust.Worker adds a
    # terminal spinner that sets the root logger to DEBUG (a log record per send)
    faust.Worker(app, loglevel="info", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
