"""Command-line wiring of the producer: options (falling back to settings) and main()."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from aiokafka.errors import KafkaError

from producers.profile import SimulationProfile
from producers.run import run_producer
from producers.scenarios import INCIDENT_AFTER_SECONDS, SCENARIO_NAMES
from producers.sinks import JsonlSink, KafkaSink, Sink
from streams.kafka import access
from streams.kafka.io import ensure_topics

if TYPE_CHECKING:
    from streams.settings import Settings

log = logging.getLogger(__name__)


def parse_start_ts(text: str) -> float:
    """Epoch seconds, or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not epoch seconds or an ISO 8601 time: {text!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def add_arguments(parser: argparse.ArgumentParser, settings: Settings) -> None:
    """Producer options; each falls back to a setting (and its environment variable)."""
    parser.add_argument(
        "--rate",
        type=float,
        default=settings.producer_rate,
        help="mean events per wall second (the time of day shapes it), 0 = as fast as "
        "possible (default %(default)s, env PRODUCER_RATE)",
    )
    parser.add_argument(
        "--speed",
        type=float,
        default=settings.producer_speed,
        help="event-time seconds per wall second: an event is sent (ts - start) / speed "
        "wall seconds after the start, so a simulated day lasts 86400/speed seconds "
        "(default %(default)s, env PRODUCER_SPEED)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=settings.producer_seed,
        help="simulator seed; same seed, same events (default %(default)s, env PRODUCER_SEED)",
    )
    parser.add_argument(
        "--members",
        type=int,
        default=settings.producer_members,
        help="simulated accounts (default %(default)s, env PRODUCER_MEMBERS)",
    )
    parser.add_argument(
        "--events",
        type=int,
        default=None,
        help="stop after this many events (default: run until --duration or interrupted)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many wall seconds (default: no limit)",
    )
    parser.add_argument(
        "--start-ts",
        type=parse_start_ts,
        default=None,
        help="event time of the start, epoch seconds or ISO 8601 (default: now)",
    )
    parser.add_argument(
        "--scenario",
        choices=SCENARIO_NAMES,
        default=settings.producer_scenario,
        help="baseline traffic, or an incident starting --incident-after event seconds "
        "after the start (see docs/runbooks.md) (default %(default)s, env PRODUCER_SCENARIO)",
    )
    parser.add_argument(
        "--incident-after",
        type=float,
        metavar="SECONDS",
        default=INCIDENT_AFTER_SECONDS,
        help="event-time seconds from the start to the scenario's incident "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        metavar="SECONDS",
        default=settings.producer_warmup_seconds,
        help="event-time seconds of history before the start, sent as fast as possible so "
        "that reply rates and latencies are at steady state when pacing begins; --events "
        "and --duration count it too (default %(default)s, env PRODUCER_WARMUP_SECONDS)",
    )
    parser.add_argument(
        "--then-live",
        action=argparse.BooleanOptionalAction,
        default=settings.producer_then_live,
        help="never send an event before the wall clock reaches its ts: events behind the "
        "clock go at --speed, and once event time has caught up it runs at 1x (live, "
        "rate/speed events per wall second); with --warmup or a past --start-ts, history "
        "is replayed up to now, then live. For a Prometheus that the workers write "
        "history to, which takes no samples from the future (default %(default)s, env "
        "PRODUCER_THEN_LIVE)",
    )
    parser.add_argument(
        "--diurnal-amplitude",
        type=float,
        metavar="A",
        default=settings.producer_diurnal_amplitude,
        help="how much the time of day shapes traffic: conversation starts follow "
        "1 + A*cos(hour - 14h UTC), 0 = flat, below 1 (default %(default)s, env "
        "PRODUCER_DIURNAL_AMPLITUDE)",
    )
    parser.add_argument(
        "--sink",
        choices=("kafka", "jsonl"),
        default="kafka",
        help="where events go (default %(default)s)",
    )
    parser.add_argument(
        "--output",
        metavar="PATH",
        default="events.jsonl",
        help="file written by --sink jsonl (default %(default)s)",
    )
    parser.add_argument(
        "--topic",
        default=settings.events_topic,
        help="topic written by --sink kafka (default %(default)s, env EVENTS_TOPIC)",
    )


async def main(args: argparse.Namespace, settings: Settings) -> int:
    """Run the producer; SIGINT/SIGTERM stop it cleanly (flushed, reported)."""
    scenario = getattr(args, "scenario", "baseline")
    if scenario not in SCENARIO_NAMES:  # argparse does not check defaults (the env's)
        log.error("unknown scenario %r; choose from %s", scenario, ", ".join(SCENARIO_NAMES))
        return 2
    warmup = getattr(args, "warmup", 0.0)
    incident_after = getattr(args, "incident_after", INCIDENT_AFTER_SECONDS)
    if warmup < 0 or incident_after < 0:
        log.error("--warmup and --incident-after must be >= 0")
        return 2
    amplitude = getattr(args, "diurnal_amplitude", settings.producer_diurnal_amplitude)
    if not 0.0 <= amplitude < 1.0:
        log.error("--diurnal-amplitude must be in [0, 1), not %s", amplitude)
        return 2
    grants = access.producer_grants(settings.model_copy(update={"events_topic": args.topic}))
    if args.sink == "kafka":
        try:
            await access.check_access(settings, grants)
            await ensure_topics(settings.model_copy(update={"events_topic": args.topic}),
                                events_only=True)
            await access.check_access(settings, grants)  # a topic made just now
        except access.KafkaAccessError as exc:
            log.error("the producer cannot start: %s", exc)
            return access.EXIT_CODE
        except (KafkaError, OSError) as exc:
            log.error("the producer cannot reach Kafka: %s", exc)
            return 1
    sink: Sink
    try:
        sink = JsonlSink(args.output) if args.sink == "jsonl" else KafkaSink(settings, args.topic)
    except OSError as exc:
        log.error("cannot open the sink: %s", exc)
        return 1
    removers = _stop_on_signals()
    try:
        report = await run_producer(
            settings,
            sink=sink,
            events=args.events,
            duration=args.duration,
            rate=args.rate,
            speed=args.speed,
            seed=args.seed,
            start_ts=args.start_ts,
            profile=replace(SimulationProfile(), diurnal_amplitude=amplitude),
            members=getattr(args, "members", None),
            scenario=scenario,
            warmup=warmup,
            incident_after=incident_after,
            then_live=getattr(args, "then_live", settings.producer_then_live),
        )
    except (KafkaError, RuntimeError, OSError) as exc:
        refusal = await access.explain_refusal(settings, exc, grants)
        if refusal is not None:  # what the broker acknowledged is in; nothing is retried
            log.error("the producer stops: %s", refusal)
            return access.EXIT_CODE
        log.error("producer failed: %s", exc)
        return 1
    finally:
        for remove in removers:
            remove()
    log.info(
        "produced %d events in %.1f s: %.0f events/s%s",
        report.events_sent,
        report.elapsed_seconds,
        report.events_per_second,
        f" ({report.warmup_events} of them warmup)" if report.warmup_events else "",
    )
    return 0


def _stop_on_signals() -> list[Callable[[], object]]:
    """Cancel the current task on SIGINT/SIGTERM (where the loop supports it)."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    removers: list[Callable[[], object]] = []
    if task is None:
        return removers
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, task.cancel)
        except (NotImplementedError, RuntimeError, ValueError):
            continue
        removers.append(functools.partial(loop.remove_signal_handler, sig))
    return removers
