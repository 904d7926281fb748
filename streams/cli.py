"""``messaging-metrics``: the one console script (worker, produce, demo, kafka)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from streams.logs import setup_logging
from streams.settings import Settings

if TYPE_CHECKING:
    from deploy.kafka_security import BrokerSecurity
    from deploy.local_kafka import LocalKafka, LocalKafkaCluster

log = logging.getLogger(__name__)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from streams.worker import run_worker

    setup_logging(settings)
    return run_worker(settings)


def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    from producers import cli as producer_cli

    setup_logging(settings)
    return asyncio.run(producer_cli.main(args, settings))


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from streams.console.demo import run_demo

    setup_logging(settings)
    return run_demo(settings, duration=args.duration)


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from streams.replay import replay

    setup_logging(settings)
    with open(args.input, "rb") as lines:
        result = replay((line.rstrip(b"\n") for line in lines), settings)
    out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: SIM115
    try:
        for record in result.window_records(settings.window_seconds):
            out.write(orjson.dumps({"kind": "window", **record}) + b"\n")
        for flag in result.flags:
            out.write(orjson.dumps({"kind": "flag", **flag.record()}) + b"\n")
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    log.info(
        "replayed %d events: %d windows, %d flags, %d invalid, %d late",
        result.events, len(result.windows), len(result.flags), sum(result.invalid.values()),
        result.late_events,
    )
    return 0


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from streams.kafka.access import EXIT_CODE, KafkaAccessError
    from streams.kafka.io import ensure_topics

    setup_logging(settings)
    try:
        partitions = asyncio.run(ensure_topics(settings))
    except KafkaAccessError as exc:
        log.error("cannot create the topics: %s", exc)
        return EXIT_CODE
    log.info("the worker's topics exist (events topic: %d partitions)", partitions)
    return 0


def cmd_kafka(args: argparse.Namespace, settings: Settings) -> int:
    import signal
    import tempfile
    from pathlib import Path

    from deploy.kafka_security import BrokerSecurity
    from deploy.local_kafka import LocalKafka, LocalKafkaCluster

    setup_logging(settings)
    if args.nodes > 1 and (args.port or args.secure):
        log.error("--port and --secure are for a single broker")
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    security = (
        BrokerSecurity.create(Path(tempfile.mkdtemp(prefix="mm-kafka-tls-")))
        if args.secure else None
    )
    kafka = (
        LocalKafka(settings.cache_dir, port=args.port, security=security) if args.nodes == 1
        else LocalKafkaCluster(settings.cache_dir, size=args.nodes)
    )
    try:
        _serve_kafka(kafka, security, args.nodes, settings, stop)
    finally:
        if security is not None:  # its keys and passwords go with the broker
            shutil.rmtree(security.directory, ignore_errors=True)
    return 0


def _serve_kafka(kafka: LocalKafka | LocalKafkaCluster, security: BrokerSecurity | None,
                 nodes: int, settings: Settings, stop: threading.Event) -> None:
    from deploy.kafka_security import provision
    from deploy.local_kafka import resolve_jars

    with kafka:
        if security is not None:
            asyncio.run(provision(security, kafka.bootstrap_servers, settings,
                                  resolve_jars(settings.cache_dir)))
            for user in ("worker", "producer"):
                print(f"{user}: set -a; . {security.env_file(user, kafka.bootstrap_servers)}; "
                      "set +a", flush=True)
            print(f"admin (for kafka-acls --command-config): {security.admin_command_config()}",
                  flush=True)
        else:
            print(f"KAFKA_BOOTSTRAP_SERVERS={kafka.bootstrap_servers}", flush=True)
        if nodes > 1:
            print(f"TOPIC_REPLICATION_FACTOR={nodes}", flush=True)
            print(f"TOPIC_MIN_INSYNC_REPLICAS={nodes - 1}", flush=True)
        print(f"broker pid(s) {kafka.pids}; Ctrl-C stops them", file=sys.stderr, flush=True)
        stop.wait()


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="messaging-metrics",
        description="Messaging metrics on Kafka + Faust. Settings come from the "
        "environment (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="run the stream worker (ingest + aggregate + /metrics)")
    produce = sub.add_parser("produce", help="run the synthetic event producer")
    from producers import cli as producer_cli

    producer_cli.add_arguments(produce, settings)
    demo = sub.add_parser(
        "demo", help="start a local broker if needed, the worker and the producer, "
        "and show a live view; Ctrl-C stops everything"
    )
    demo.add_argument("--duration", type=float, default=None,
                      help="stop by itself after this many seconds (default: run until Ctrl-C)")
    replay = sub.add_parser(
        "replay", help="recompute every window and risk flag offline from a JSONL file of "
        "events, with the worker's code (same settings, same results)"
    )
    replay.add_argument("input", help="JSONL file, one event per line (e.g. produce --sink jsonl)")
    replay.add_argument("--output", default="-",
                        help="where to write one JSON line per window and flag (default stdout)")
    kafka = sub.add_parser(
        "kafka", help="run a local Kafka broker (or a three-node cluster) until Ctrl-C"
    )
    kafka.add_argument("--port", type=int, default=0,
                       help="listener port of a single broker (default: a free one)")
    kafka.add_argument("--nodes", type=int, default=1, choices=(1, 3),
                       help="1: one broker; 3: a KRaft cluster of three broker+controller "
                       "nodes, replication factor 3, min.insync.replicas 2 (default 1)")
    kafka.add_argument("--secure", action="store_true",
                       help="one broker on SASL_SSL (TLS with client certificates, "
                       "SCRAM-SHA-512) with ACLs: topics made, the worker and producer "
                       "users granted exactly their ACLs; prints the env files to source")
    sub.add_parser(
        "topics", help="create the worker's topics and exit (as a user allowed to: the "
        "worker itself needs no CREATE; see README: Kafka ACLs)"
    )
    return parser


COMMANDS = {
    "worker": cmd_worker, "produce": cmd_produce, "demo": cmd_demo, "replay": cmd_replay,
    "kafka": cmd_kafka, "topics": cmd_topics,
}


def main(argv: Sequence[str] | None = None) -> int:
    settings = Settings()
    args = build_parser(settings).parse_args(argv)
    return COMMANDS[args.command](args, settings)


if __name__ == "__main__":
    sys.exit(main())
