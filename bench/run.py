"""``python -m bench``: the worker against its peers on one preloaded topic.

Preloads N simulator events (default 1,000,000) into a fresh topic on a local broker
(``deploy.local_kafka``; or ``KAFKA_BOOTSTRAP_SERVERS`` if set), then runs each
variant on it, one after another, each with a fresh consumer group from the earliest
offset, and measures it from its first to its last event (before them, a worker of its
own group takes the first ``--warmup-events``, unmeasured, so that a new broker has
compiled its transaction paths, as a production broker has):

- ``ceiling``: (a) a bare aiokafka consumer: getmany + orjson + dict count;
- ``faust``: (b) naive Faust: one windowed-table update per event;
- ``quix``: (c) Quix Streams: group_by + tumbling_window(60 s).count().final();
- ``worker``: ``messaging-metrics worker`` with all its metrics and exactly-once on.

All compute tumbling 60 s event-time counts per (type, platform, channel). Reported per
variant: events/s and its ratio to the ceiling, CPU seconds per million events
(utime+stime from /proc of the variant's processes over the measured interval) and
peak RSS (VmHWM). Then the worker's freshness with a live producer: per event-time
window, the wall time from its last event being produced to ``/metrics`` showing
that window as closed. Results: a table, ``bench/results/<UTC time>.json`` and a bar
chart ``.png`` beside it; the processes' logs in ``bench/results/<UTC time>-logs/``.

    python -m bench                                      # the full run (N = 1,000,000)
    python -m bench --events 5000 --variants ceiling,worker --skip-freshness  # smoke
    python -m bench --soak-minutes 10 --soak-rate 50000  # RSS over time, worker only

Every process the bench starts is stopped by PID, also on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from bench import report
from bench.peers import progress as peer_progress
from bench.procs import ROOT, Processes, Sampler, status_kb, with_descendants
from producers.profile import SimulationProfile
from producers.simulator import Simulator
from streams.kafka.io import ensure_topics
from streams.settings import Settings
from tests.harness import WorkerProcess, settings_env, wait_until
from tests.pipeline import processed_total, produce

VARIANTS: dict[str, str] = {
    "ceiling": "(a) aiokafka getmany+orjson+dict",
    "faust": "(b) Faust, table update per event",
    "quix": "(c) Quix, group_by+tumbling count",
    "worker": "our worker, exactly-once",
}
ORDER = ("ceiling", "worker", "quix", "faust")
RESULTS = ROOT / "bench" / "results"
PEER_POLL, WORKER_POLL = 0.05, 0.1  # seconds between samples (a worker sample is a scrape)
STALL_SECONDS = 90.0  # no progress this long after the first event: the variant failed

console = Console(stderr=True)


class Interrupted(Exception):
    """SIGTERM (Ctrl-C is KeyboardInterrupt): stop everything, keep what was measured."""


@dataclass
class Outcome:
    name: str
    label: str
    status: str = "ok"  # ok | failed | skipped
    reason: str | None = None
    events: int | None = None  # events in the measured interval
    seconds: float | None = None
    events_per_second: float | None = None
    ratio_to_ceiling: float | None = None
    cpu_seconds: float | None = None
    cpu_seconds_per_million: float | None = None
    peak_rss_bytes: int | None = None
    startup_seconds: float | None = None  # process start to first event
    processes: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    args: argparse.Namespace
    base: Settings
    run_id: str
    workdir: Path
    logs: Path
    processes: Processes
    timeout: float = 0.0  # seconds one variant may take
    broker_pid: int | None = None  # the local broker, whose CPU each variant also costs

    def settings(self, name: str, **overrides: Any) -> Settings:
        """Settings with this run's own app id and topics (``bench-<run>-<name>.<topic>``)."""
        prefix = f"bench-{self.run_id}-{name}"
        values = self.base.model_dump()
        for key, value in list(values.items()):
            if key.endswith("_topic"):  # every topic setting, also ones added later
                values[key] = f"{prefix}.{value}"
        values.update(
            app_id=prefix, worker_id="bench", metrics_port=0,
            cache_dir=self.workdir / f"{name}-cache", **overrides,
        )
        if self.args.partitions:
            values["events_partitions"] = self.args.partitions
        values["ingest_processes"] = self.args.ingest_processes  # our worker's only
        return Settings(**values)


# --- preload -----------------------------------------------------------------------------
def preload(ctx: Context, settings: Settings) -> dict[str, Any]:
    """N simulator events into a fresh topic, as fast as the Kafka sink goes."""
    args = ctx.args
    n = args.events
    profile = SimulationProfile()
    # Event seconds the N events cover at the day's lowest density (the simulator's rate
    # swings by the diurnal amplitude): the stream must end in the past, because Kafka
    # 4 refuses records stamped over an hour ahead (log.message.timestamp.after.max.ms),
    # and Quix stamps its repartition records with the event time. A run at 23:00 UTC
    # failed so with the mean-rate estimate.
    span = n * args.speed / args.event_rate / (1.0 - profile.diurnal_amplitude)
    simulator = Simulator(
        profile, seed=args.seed, start_ts=time.time() - span,
        rate=args.event_rate, speed=args.speed, members=settings.producer_members,
    )
    sizes, conversations, last_ts = [0], [0], [-math.inf]
    dumps = orjson.dumps

    def records() -> Iterator[tuple[bytes, bytes]]:
        for event in islice(simulator.events(), n):
            value = dumps(event)
            sizes[0] += len(value)
            conversations[0] += bool(event.get("first_in_conversation"))
            last_ts[0] = max(last_ts[0], event["ts"])
            yield event["conversation_id"].encode(), value

    console.log(f"preloading {n:,} events into {settings.events_topic} "
                f"({settings.events_partitions} partitions)")
    started = time.perf_counter()
    produce(settings, records())  # type: ignore[arg-type]  # streamed, not a list
    seconds = time.perf_counter() - started
    ends = asyncio.run(_end_offsets(settings, settings.events_topic))
    stored = sum(ends.values())
    if stored != n:
        raise RuntimeError(f"the preloaded topic holds {stored} records, not {n}")
    console.log(f"preloaded in {seconds:.1f} s ({n / seconds:,.0f} events/s), "
                f"{sizes[0] / n:.0f} bytes/event")
    return {
        "topic": settings.events_topic, "events": n, "partitions": len(ends),
        "seconds": seconds, "events_per_second": n / seconds,
        "mean_event_bytes": sizes[0] / n, "event_rate": args.event_rate, "speed": args.speed,
        "seed": args.seed, "per_partition": {str(p): c for p, c in sorted(ends.items())},
        "conversations": conversations[0], "last_event_ts": last_ts[0],
    }


async def _end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    return (await _topic_end_offsets(settings, [topic]))[topic]


async def _topic_end_offsets(settings: Settings, topics: list[str]) -> dict[str, dict[int, int]]:
    """Each topic's end offset per partition (0 partitions: the topic does not exist)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    consumer = AIOKafkaConsumer(**settings.kafka_client_options())
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        out: dict[str, dict[int, int]] = {}
        for topic in topics:
            partitions = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            ends = await consumer.end_offsets(tps) if tps else {}
            out[topic] = {tp.partition: offset for tp, offset in ends.items()}
        return out
    finally:
        await consumer.stop()


def _written_per_event(settings: Settings, events: int) -> dict[str, float]:
    """What the worker wrote to each of its topics per input event: offsets, so
    records plus one transaction marker per partition and transaction. Where the
    broker's work per event comes from."""
    topics = [
        settings.partials_topic, settings.activity_topic, settings.ingest_state_topic,
        settings.risk_state_topic, settings.aggregate_state_topic, settings.metrics_topic,
        settings.flagged_topic, settings.dlq_topic,
    ]
    ends = asyncio.run(_topic_end_offsets(settings, topics))
    return {topic: round(sum(ends[topic].values()) / events, 4) for topic in topics}


# --- measuring one variant ---------------------------------------------------------------
Poll = Callable[[], tuple[float, float | None, float | None, dict[str, Any]]]


def watch(
    outcome: Outcome, target: int, pids: Callable[[], list[int]], poll: Poll,
    check: Callable[[], None], started_wall: float, timeout: float, interval: float,
    broker_pid: int | None = None,
) -> Outcome:
    """Sample progress and CPU until ``target`` events are done; fill in the outcome.

    ``poll`` returns (count, first_wall, done_wall, info); a variant that does not
    report first/done wall times (the worker) is timed by the samples instead:
    from the first sample with a count > 0 to the first with the target reached.
    The local broker's CPU over the same interval goes into ``info``: on a small
    machine it shares the cores with the variant.
    """
    sampler: Sampler | None = None
    broker = Sampler([broker_pid], by_thread=True) if broker_pid else None
    first: tuple[float, float] | None = None  # (wall, count) of the first sample with progress
    done_sample: float | None = None
    reported_first = reported_done = None
    last_count, last_change = -1.0, time.time()
    deadline = time.monotonic() + timeout
    info: dict[str, Any] = {}
    while True:
        check()
        if sampler is None:
            current = pids()
            if current:
                sampler = Sampler(current)
        count, reported_first, reported_done, info = poll()
        now = time.time()
        if sampler is not None:
            sampler.sample(count)
            if broker is not None:
                broker.sample(count)
        if count != last_count:
            last_count, last_change = count, now
        if first is None and count > 0:
            first = (now, count)
        if count >= target:
            done_sample = now
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count:,.0f} of {target:,} events after {timeout:.0f} s")
        if first is not None and now - last_change > STALL_SECONDS:
            raise TimeoutError(f"stalled at {count:,.0f} of {target:,} events")
        time.sleep(interval)
    assert sampler is not None and first is not None and done_sample is not None
    time.sleep(interval)  # one more sample after the end, to interpolate the CPU
    sampler.sample(count)
    if broker is not None:
        broker.sample(count)
    if reported_first is not None and reported_done is not None:
        t0, c0, t1 = reported_first, 0.0, reported_done
    else:
        t0, c0, t1 = first[0], first[1], done_sample
    outcome.info.update(info)
    outcome.processes = len(with_descendants(sampler.pids))
    outcome.peak_rss_bytes = sampler.peak_rss_bytes()
    outcome.startup_seconds = round(t0 - started_wall, 3)
    events = int(target - c0)
    if events <= 0 or t1 <= t0:
        outcome.info["note"] = ("every event was done by the first sample: too few events "
                                "to time (use more --events)")
        outcome.events = 0
        return outcome
    outcome.events = events
    outcome.seconds = t1 - t0
    outcome.events_per_second = events / outcome.seconds
    outcome.cpu_seconds = sampler.cpu_at(t1) - sampler.cpu_at(t0)
    outcome.cpu_seconds_per_million = outcome.cpu_seconds / events * 1e6
    outcome.info["cpu_seconds_total"] = round(sampler.samples[-1].cpu, 3)
    if broker is not None:
        broker_cpu = broker.cpu_at(t1) - broker.cpu_at(t0)
        outcome.info["broker_cpu_seconds_per_million"] = round(broker_cpu / events * 1e6, 2)
        outcome.info["broker_cores"] = round(broker_cpu / (t1 - t0), 2)
        outcome.info["broker_cpu_seconds_per_million_by_thread"] = {
            part: round((broker.cpu_at(t1, part) - broker.cpu_at(t0, part)) / events * 1e6, 2)
            for part in ("work", "jit", "gc")
        }
    outcome.info["timeline"] = _timeline(sampler, started_wall)
    return outcome


def _timeline(sampler: Sampler, started_wall: float, points: int = 120) -> list[list[float]]:
    """[seconds since start, events done, CPU seconds], at most ``points`` samples."""
    samples = sampler.samples
    step = max(1, len(samples) // points)
    picked = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
    return [[round(s.wall - started_wall, 3), s.count, round(s.cpu, 3)] for s in picked]


def _proc_check(proc: Any, name: str, log_path: Path) -> Callable[[], None]:
    def check() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")

    return check


def run_peer(
    ctx: Context, name: str, module: str, args: list[str], settings: Settings
) -> Outcome:
    outcome = Outcome(name, VARIANTS[name])
    status = ctx.workdir / f"{name}.status.json"
    log_path = ctx.logs / f"{name}.log"
    argv = [*args, "--events", str(ctx.args.events), "--status", str(status)]
    started = time.time()
    proc = ctx.processes.python(module, *argv, env=settings_env(settings), log_path=log_path)
    console.log(f"{name}: started pid {proc.pid} (log {log_path})")

    def poll() -> tuple[float, float | None, float | None, dict[str, Any]]:
        data = peer_progress.read(status) or {}
        extra = {k: v for k, v in data.items()
                 if k not in {"count", "target", "first_wall", "done_wall", "pid"}}
        return data.get("count", 0), data.get("first_wall"), data.get("done_wall"), extra

    try:
        watch(outcome, ctx.args.events, lambda: [proc.pid], poll,
              _proc_check(proc, name, log_path), started, ctx.timeout, PEER_POLL,
              broker_pid=ctx.broker_pid)
        time.sleep(0.3)  # a last status write (e.g. the ceiling's cell count)
        outcome.info.update(poll()[3])
    finally:
        ctx.processes.stop(proc)
    return outcome


def run_ceiling(ctx: Context, topic: str) -> Outcome:
    settings = ctx.settings("ceiling")
    return run_peer(ctx, "ceiling", "bench.peers.ceiling",
                    ["--topic", topic, "--group", settings.app_id], settings)


def run_faust(ctx: Context, topic: str) -> Outcome:
    settings = ctx.settings("faust")
    datadir = ctx.workdir / "faust-data"
    extra = []
    if ctx.args.faust_producer_linger:
        extra = ["--producer-linger", str(ctx.args.faust_producer_linger)]
    outcome = run_peer(ctx, "faust", "bench.peers.faust_naive",
                       ["--topic", topic, "--app-id", settings.app_id, "--datadir", str(datadir),
                        "--partitions", str(settings.events_partitions), *extra], settings)
    outcome.info["producer_linger"] = ctx.args.faust_producer_linger or 0.0
    return outcome


def run_quix(ctx: Context, topic: str) -> Outcome:
    if importlib.util.find_spec("quixstreams") is None:
        return Outcome("quix", VARIANTS["quix"], status="skipped",
                       reason="quixstreams is not installed (uv sync --extra bench)")
    settings = ctx.settings("quix")
    outcome = run_peer(ctx, "quix", "bench.peers.quix_tumbling",
                       ["--topic", topic, "--group", settings.app_id,
                        "--state-dir", str(ctx.workdir / "quix-state"),
                        "--grace-ms", str(ctx.args.quix_grace_ms)], settings)
    outcome.info["grace_ms"] = ctx.args.quix_grace_ms
    outcome.info["pre_keyed"] = False  # group_by: repartitioned through a topic
    return outcome


def run_worker(ctx: Context, topic: str, name: str = "worker", events: int | None = None) -> Outcome:
    """Our worker takes ``events`` of the topic (default: all of it) under its own group."""
    outcome = Outcome(name, VARIANTS["worker"])
    settings = ctx.settings(name, events_topic=topic)
    log_path = ctx.logs / f"{name}.log"
    target = ctx.args.events if events is None else events
    worker = WorkerProcess(settings, log_path)
    ctx.processes.adopt(worker, worker.stop)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            worker.start()
        except BaseException as exc:  # noqa: BLE001 - reported by check()
            errors.append(exc)

    started = time.time()
    starter = threading.Thread(target=start, daemon=True)
    starter.start()  # the worker is sampled from its first moment, not from /healthz
    console.log(f"worker: starting (log {log_path})")

    def pids() -> list[int]:
        return [worker.process.pid] if worker.process is not None else []

    def check() -> None:
        if errors:
            raise RuntimeError(str(errors[0]))
        if worker.process is not None and worker.process.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.process.returncode}; see {log_path}")

    def poll() -> tuple[float, float | None, float | None, dict[str, Any]]:
        if worker.process is None:
            return 0, None, None, {}
        try:
            return processed_total(worker), None, None, {}
        except OSError:  # /metrics not up yet
            return 0, None, None, {}

    try:
        watch(outcome, target, pids, poll, check, started, ctx.timeout, WORKER_POLL,
              broker_pid=ctx.broker_pid)
        scraped = worker.scrape()
        outcome.info["invalid_events"] = _metric_sum(scraped, "messaging_invalid_events_total")
        outcome.info["late_events"] = _metric_sum(scraped, "messaging_late_events_total")
        outcome.info["batches"] = _metric_sum(scraped, "messaging_ingest_batch_size_events_count")
        outcome.info["ingest_processes"] = settings.ingest_processes
        outcome.info["offsets_written_per_event"] = _written_per_event(settings, target)
    finally:
        ctx.processes.stop(worker)
        starter.join(5)
    return outcome


def warm_up_broker(ctx: Context, topic: str) -> Outcome:
    """A worker of its own group takes the first ``--warmup-events`` before anything is
    measured. A new broker's JVM compiles each request path the first time it is busy
    (``jit`` in the broker's CPU): the preload warms producing and the ceiling needs
    only fetches, but our worker's transactions (transactional produce, offsets into
    the transaction, commit markers) would pay for the compiling inside their measured
    interval: 1.4 of 3.0 broker CPU s / M in a cold run, 0.5-0.7 of 2.0-2.4 in a warm
    one. A production broker compiled them long ago. A failed warm-up is reported, and
    the variants are measured anyway (on a broker less warm)."""
    events = min(ctx.args.warmup_events, ctx.args.events)
    console.rule(f"warm-up: our worker takes {events:,} events (not measured)")
    outcome = _attempt("warmup", VARIANTS["worker"], lambda: run_worker(ctx, topic, "warmup", events))
    console.log(report.one_line(outcome))
    return outcome


def _attempt(name: str, description: str, run: Callable[[], Outcome]) -> Outcome:
    """One measurement; a failure is recorded as its outcome (with the reason) and the
    run goes on to the next: one failed peer does not cost the others' numbers. An
    interrupt still ends the run."""
    try:
        return run()
    except (KeyboardInterrupt, Interrupted):
        raise
    except Exception as exc:  # noqa: BLE001 - reported in the outcome, not swallowed
        return Outcome(name, description, status="failed", reason=str(exc))


def rss_of_tree(pid: int, field: str) -> int:
    """Bytes of a ``/proc/<pid>/status`` field summed over the process and its descendants."""
    return 1024 * sum(status_kb(p, field) for p in with_descendants([pid]))


def rss_by_process(pid: int) -> list[dict[str, Any]]:
    """Each process of the tree (the worker's main process first, then its ingest
    children and multiprocessing's resource tracker) with its RSS: which of them grows,
    not only their sum."""
    out = []
    for each in with_descendants([pid]):
        try:
            cmdline = Path(f"/proc/{each}/cmdline").read_bytes()
        except OSError:
            continue  # gone since the walk
        role = ("main" if each == pid else
                "resource_tracker" if b"resource_tracker" in cmdline else "child")
        out.append({"pid": each, "role": role, "rss_bytes": 1024 * status_kb(each, "VmRSS")})
    return out


def _mib_by_process(processes: list[dict[str, Any]]) -> str:
    return ", ".join(f"{p['role']} {p['rss_bytes'] / 2**20:.0f}" for p in processes
                     if p["role"] != "resource_tracker")


def state_store(worker: WorkerProcess) -> dict[str, dict[str, int]]:
    """The worker's ``messaging_state_store_bytes``: by stage, its RocksDB's parts."""
    out: dict[str, dict[str, int]] = {}
    for (_, labels), value in worker.scrape("messaging_state_store_bytes").items():
        named = dict(labels)
        out.setdefault(named["stage"], {})[named["part"]] = int(value)
    return out


def _store_memory_mib(store: dict[str, dict[str, int]]) -> str:
    return ", ".join(
        f"{stage} {sum(v for part, v in parts.items() if part != 'sst_files') / 2**20:.0f} MiB"
        for stage, parts in sorted(store.items())
    )


def _metric_sum(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
                **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in scraped.items() if n == name and wanted <= set(ls))


RUNNERS: dict[str, Callable[[Context, str], Outcome]] = {
    "ceiling": run_ceiling, "faust": run_faust, "quix": run_quix, "worker": run_worker,
}


# --- the worker live: freshness and soak ---------------------------------------------------
def start_live_worker(ctx: Context, name: str) -> tuple[WorkerProcess, Settings]:
    settings = ctx.settings(name)
    asyncio.run(ensure_topics(settings))
    worker = WorkerProcess(settings, ctx.logs / f"{name}-worker.log")
    ctx.processes.adopt(worker, worker.stop)
    worker.start()

    def owns_everything() -> bool:
        scraped = worker.scrape()
        ingest = _metric_sum(scraped, "messaging_owned_partitions", stage="ingest")
        aggregate = _metric_sum(scraped, "messaging_owned_partitions", stage="aggregate")
        return (ingest >= settings.events_partitions
                and aggregate >= settings.partials_partitions)

    wait_until(owns_everything, 90, "the worker to own every partition", interval=0.2)
    return worker, settings


def start_producer(
    ctx: Context, settings: Settings, name: str, rate: float, duration: float, seed: int
) -> tuple[Any, Path]:
    record = ctx.workdir / f"{name}.record.json"
    proc = ctx.processes.python(
        "bench.live", "--topic", settings.events_topic, "--rate", str(rate),
        "--speed", str(ctx.args.speed), "--duration", str(duration), "--seed", str(seed),
        "--record", str(record), env=settings_env(settings), log_path=ctx.logs / f"{name}.log",
    )
    return proc, record


def run_freshness(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    worker, settings = start_live_worker(ctx, "fresh")
    lateness_wall = settings.allowed_lateness_seconds / args.speed
    producer = None
    try:
        producer, record_path = start_producer(
            ctx, settings, "fresh-producer", args.freshness_rate, args.freshness_seconds,
            args.seed,
        )
        console.log(f"freshness: producing {args.freshness_rate:,.0f} events/s at speed "
                    f"{args.speed:g} for {args.freshness_seconds:g} s, sampling /metrics "
                    "every 100 ms")
        seen: dict[float, float] = {}  # window end -> first wall time /metrics showed it
        lags: list[float] = []
        record: dict[str, Any] | None = None
        wanted_end = settle_until = None
        while True:
            now = time.time()
            try:
                scraped = worker.scrape()
            except OSError:
                scraped = {}
            end = scraped.get(("messaging_window_end_timestamp_seconds", frozenset()))
            if end is not None and end not in seen:
                seen[end] = now
            if scraped:
                lags.append(_metric_sum(scraped, "messaging_consumer_lag_messages"))
            if record is None and producer.poll() is not None:
                if producer.returncode != 0:
                    raise RuntimeError(f"the live producer exited with {producer.returncode}")
                record = orjson.loads(record_path.read_bytes())
                # wait for the last window that closes on the watermark (not on idleness)
                wanted_end = _last_closing_end(record, settings)
                settle_until = now + args.freshness_settle
            if record is not None and (
                (end is not None and wanted_end is not None and end >= wanted_end)
                or now > settle_until  # type: ignore[operator]
            ):
                break
            worker_proc = worker.process
            if worker_proc is not None and worker_proc.poll() is not None:
                raise RuntimeError("the worker died during the freshness run")
            time.sleep(max(0.0, 0.1 - (time.time() - now)))
    finally:
        if producer is not None:
            ctx.processes.stop(producer)
        ctx.processes.stop(worker)
    assert record is not None
    summary = freshness_summary(record, seen, settings.window_seconds,
                                settings.allowed_lateness_seconds, args, lateness_wall)
    summary["max_consumer_lag"] = max(lags) if lags else None
    return summary


def _last_closing_end(record: dict[str, Any], settings: Settings) -> float | None:
    """End of the newest window measured (see :func:`freshness_summary`)."""
    last_ts = record.get("last_ts")
    if last_ts is None:
        return None
    size = settings.window_seconds
    return (int((last_ts - settings.allowed_lateness_seconds) // size) - 1) * size


def freshness_summary(
    record: dict[str, Any], seen: dict[float, float], window: int, lateness: int,
    args: argparse.Namespace, lateness_wall: float,
) -> dict[str, Any]:
    sent = {int(start): wall for start, wall in record["windows"].items()}
    starts = sorted(sent)
    last_ts = record.get("last_ts") or 0.0
    # the first window is partial and meets a cold worker; windows that end after the
    # last event's ts minus the lateness close only by the idle timeout (and the one
    # before them may, on a partition whose newest event is older): all left out
    measured = [s for s in starts[1:] if s + 2 * window + lateness <= last_ts]
    shown = sorted(seen.items())
    windows = []
    for start in measured:
        end = start + window
        when = next((wall for value, wall in shown if value >= end), None)
        windows.append({
            "window_start": start,
            "last_event_sent_wall": sent[start],
            "gauge_seen_wall": when,
            "freshness_seconds": None if when is None else round(when - sent[start], 3),
        })
    values = sorted(w["freshness_seconds"] for w in windows if w["freshness_seconds"] is not None)
    return {
        "rate": args.freshness_rate,
        "speed": args.speed,
        "duration_seconds": args.freshness_seconds,
        "producer_events_sent": record.get("events_sent"),
        "producer_events_per_second": record.get("events_per_second"),
        "windows_measured": len(values),
        "windows_never_shown": sum(1 for w in windows if w["gauge_seen_wall"] is None),
        "p50_seconds": _quantile(values, 0.5),
        "p95_seconds": _quantile(values, 0.95),
        "max_seconds": values[-1] if values else None,
        "min_seconds": values[0] if values else None,
        "lateness_wall_seconds": lateness_wall,
        "sample_interval_seconds": 0.1,
        "note": "includes the allowed lateness (ALLOWED_LATENESS_SECONDS / speed wall s on "
                "average, less in the simulated night when event time runs faster: a "
                "window closes when an event that much later has arrived), the producer's "
                "linger (one 50 ms tick) and up to one 100 ms sample",
        "windows": windows,
    }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[index]


def run_soak(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    duration = args.soak_minutes * 60.0
    worker, settings = start_live_worker(ctx, "soak")
    assert worker.process is not None
    pid = worker.process.pid
    producers = []
    try:
        rate = args.soak_rate / args.soak_producers
        for i in range(args.soak_producers):
            producers.append(start_producer(
                ctx, settings, f"soak-producer-{i}", rate, duration, args.seed + i,
            ))
        console.log(f"soak: {args.soak_rate:,.0f} events/s ({args.soak_producers} producer(s)) "
                    f"for {args.soak_minutes:g} min; worker RSS every {args.soak_interval:g} s")
        started = time.time()
        samples = []
        while True:
            now = time.time()
            scraped: dict[Any, float] = {}
            try:
                scraped = worker.scrape()
            except OSError:
                pass
            by_process = rss_by_process(pid)
            samples.append({
                "seconds": round(now - started, 2),
                "rss_bytes": sum(p["rss_bytes"] for p in by_process),  # children included
                "rss_by_process": by_process,
                "processed": _metric_sum(scraped, "messaging_events_processed_total"),
                # late: with several producers each keeps its own event-time pace, and at
                # high --speed the allowed lateness is a small fraction of a wall second
                "late": _metric_sum(scraped, "messaging_late_events_total"),
                "invalid": _metric_sum(scraped, "messaging_invalid_events_total"),
                "lag": _metric_sum(scraped, "messaging_consumer_lag_messages"),
            })
            if worker.process is None or worker.process.poll() is not None:
                raise RuntimeError("the worker died during the soak")
            if all(proc.poll() is not None for proc, _ in producers):
                break
            console.log(f"soak {samples[-1]['seconds']:.0f} s: RSS "
                        f"{samples[-1]['rss_bytes'] / 2**20:.0f} MiB "
                        f"({_mib_by_process(by_process)}), processed "
                        f"{samples[-1]['processed']:,.0f}, lag {samples[-1]['lag']:,.0f}")
            time.sleep(max(0.0, args.soak_interval - (time.time() - now)))
        peak = rss_of_tree(pid, "VmHWM")
    finally:
        for proc, _ in producers:
            ctx.processes.stop(proc)
        ctx.processes.stop(worker)
    records = [orjson.loads(path.read_bytes()) for _, path in producers if path.exists()]
    sent = sum(r["events_sent"] for r in records)
    produced_for = max((r["elapsed_seconds"] for r in records), default=0.0)
    half = [s["rss_bytes"] for s in samples if s["seconds"] >= duration / 2]
    ratio = max(half) / min(half) if half and min(half) > 0 else None
    return {
        "minutes": args.soak_minutes, "rate": args.soak_rate, "producers": args.soak_producers,
        "speed": args.speed, "events_sent": sent,
        "achieved_events_per_second": sent / produced_for if produced_for else None,
        "processed": samples[-1]["processed"] if samples else None,
        "late": samples[-1]["late"] if samples else None,
        "invalid": samples[-1]["invalid"] if samples else None,
        "final_lag": samples[-1]["lag"] if samples else None,
        "second_half_max_over_min": ratio,
        "rss_flat": ratio is not None and ratio <= 1.10,
        "peak_rss_bytes": peak, "samples": samples,
    }


# --- restart: from a kill -9 to processing new input ---------------------------------------
def run_restart(ctx: Context, topic: str, preloaded: dict[str, Any]) -> dict[str, Any]:
    """The worker takes the preloaded events (its state: every conversation they
    started), is killed with SIGKILL, new events arrive, and a new worker starts: the
    time from its start to having processed all the new events is what a crash costs
    (process start, group join, state restore, then the batch)."""
    args = ctx.args
    settings = ctx.settings("restart", events_topic=topic)
    log_path = ctx.logs / "restart-worker.log"
    first = WorkerProcess(settings, log_path)
    ctx.processes.adopt(first, first.stop)
    console.log(f"restart: the worker takes the {args.events:,} preloaded events")
    started = time.time()
    first.start()
    wait_until(lambda: processed_total(first) >= args.events, ctx.timeout,
               "the worker to take the preloaded events", interval=0.5)
    assert first.process is not None
    took = time.time() - started
    at_done = rss_by_process(first.process.pid)
    rss_done = sum(p["rss_bytes"] for p in at_done)
    console.log(f"restart: took them in {took:.1f} s; RSS {rss_done / 2**20:.0f} MiB "
                f"({_mib_by_process(at_done)}); settling {args.restart_settle:.0f} s")
    # What a batch held while the backlog ran (fetched records, the batch's records,
    # free memory the allocator keeps until the next trim) moves RSS by ~0.2 GiB from
    # one moment to the next; idle, the worker trims every 5 s and holds its state and
    # its fixed budget: the number to compare across state sizes.
    settled: list[int] = []
    settle_until = time.monotonic() + args.restart_settle
    while True:
        before_kill = rss_by_process(first.process.pid)
        settled.append(sum(p["rss_bytes"] for p in before_kill))
        if time.monotonic() >= settle_until:
            break
        time.sleep(1.0)
    rss = settled[-1]
    store = state_store(first)
    ids = first.scrape("messaging_event_ids", "messaging_event_ids_memory_bytes")
    event_ids = {"ids": int(_metric_sum(ids, "messaging_event_ids")),
                 "bytes": int(_metric_sum(ids, "messaging_event_ids_memory_bytes"))}
    console.log(f"restart: idle RSS {rss / 2**20:.0f} MiB ({_mib_by_process(before_kill)}); "
                f"RocksDB in memory {_store_memory_mib(store)}; event ids {event_ids['ids']:,} "
                f"({event_ids['bytes'] / 2**20:.0f} MiB); kill -9")
    first.kill()
    ctx.processes.stop(first)
    if args.restart_new_disk:
        shutil.rmtree(first.env["STATE_DIR"], ignore_errors=True)
    new_events = args.restart_new_events
    # The stream goes on where the preload ended, as it does after a real crash. (New
    # events stamped "a minute ago" fell into windows the preload had already closed
    # whenever its last events were newer than that: all dropped as late, the restart
    # never done.)
    simulator = Simulator(
        SimulationProfile(), seed=args.seed + 1, start_ts=preloaded["last_event_ts"] + 1.0,
        rate=args.event_rate, speed=args.speed, members=settings.producer_members,
    )
    produce(settings, [  # type: ignore[arg-type]
        (event["conversation_id"].encode(), orjson.dumps(event))
        for event in islice(simulator.events(), new_events)
    ])
    second = WorkerProcess(settings, log_path)
    ctx.processes.adopt(second, second.stop)
    began = time.time()
    second.start(wait=False)
    answered = None
    while True:
        if second.process is None or second.process.poll() is not None:
            raise RuntimeError(f"the restarted worker exited; see {log_path}")
        try:
            scraped = second.scrape()
            answered = answered or time.time()
        except OSError:
            scraped = {}
        done = _metric_sum(scraped, "messaging_events_processed_total")
        if done >= new_events:
            break
        dropped = (_metric_sum(scraped, "messaging_late_events_total")
                   + _metric_sum(scraped, "messaging_invalid_events_total"))
        if dropped and done + dropped >= new_events:
            raise RuntimeError(f"the restarted worker dropped {dropped:.0f} of the {new_events} "
                               f"new events as late or invalid; see {log_path}")
        if time.time() - began > ctx.timeout:
            raise TimeoutError(f"the restarted worker processed {done} of {new_events} events")
        time.sleep(0.1)
    restart_seconds = time.time() - began
    assert second.process is not None
    after_restart = rss_by_process(second.process.pid)
    rss_after = sum(p["rss_bytes"] for p in after_restart)
    ctx.processes.stop(second)
    console.log(f"restart: {restart_seconds:.1f} s from start to {new_events:,} new events "
                f"processed (/metrics up after {(answered or began) - began:.1f} s); "
                f"RSS {rss_after / 2**20:.0f} MiB ({_mib_by_process(after_restart)})")
    return {
        "events": args.events, "conversations": preloaded.get("conversations"),
        "first_run_seconds": round(took, 2), "rss_before_kill_bytes": rss,
        "rss_at_done_bytes": rss_done, "rss_at_done_by_process": at_done,
        "rss_settling_bytes": settled, "state_store_before_kill_bytes": store,
        "event_ids_before_kill": event_ids,
        "new_events": new_events, "new_disk": args.restart_new_disk,
        "restart_seconds": round(restart_seconds, 2),
        "metrics_up_seconds": round((answered or began) - began, 2),
        "rss_after_restart_bytes": rss_after,
        "rss_before_kill_by_process": before_kill, "rss_after_restart_by_process": after_restart,
        "restored": [line.strip() for line in log_path.read_text().splitlines()
                     if "restored partitions" in line][-8:],
    }


# --- versions and the whole run ------------------------------------------------------------
def versions() -> dict[str, str | None]:
    from deploy.local_kafka import kafka_version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("faust-streaming", "aiokafka", "quixstreams", "confluent-kafka", "orjson"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    try:
        import confluent_kafka

        out["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:
        out["librdkafka"] = None
    out["kafka_broker"] = kafka_version()
    return out


def loadavg() -> list[float] | None:
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return None


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_at_start": loadavg(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=1_000_000,
                        help="events preloaded and processed by each variant (default %(default)s)")
    parser.add_argument("--variants", default=",".join(ORDER),
                        help="comma-separated subset of %(default)s, run in that order")
    parser.add_argument("--skip-freshness", action="store_true",
                        help="leave out the worker's freshness run")
    parser.add_argument("--freshness-seconds", type=float, default=30.0,
                        help="wall seconds of live production (default %(default)s)")
    parser.add_argument("--freshness-rate", type=float, default=20_000.0,
                        help="events per wall second of the live producer (default %(default)s)")
    parser.add_argument("--freshness-settle", type=float, default=60.0,
                        help="after the producer stops, wait at most this long for the "
                        "last windows to show (default %(default)s)")
    parser.add_argument("--speed", type=float, default=60.0,
                        help="event seconds per wall second of the simulator (default %(default)s)")
    parser.add_argument("--event-rate", type=float, default=20_000.0,
                        help="the preloaded stream's density: events per wall second at --speed "
                        "(default %(default)s: N = 1M covers ~50 one-minute windows)")
    parser.add_argument("--partitions", type=int, default=None,
                        help="partitions of the events topic (default EVENTS_PARTITIONS)")
    parser.add_argument("--ingest-processes", type=int, default=None,
                        help="INGEST_PROCESSES of our worker (default: INGEST_PROCESSES if "
                        "set, else one per CPU, at most one per events partition)")
    parser.add_argument("--seed", type=int, default=42, help="simulator seed")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds one variant may take (default 120 + events/1000)")
    parser.add_argument("--faust-producer-linger", type=float, default=None,
                        help="producer_linger (s) of the naive Faust peer (default Faust's: 0)")
    parser.add_argument("--quix-grace-ms", type=int, default=3_600_000,
                        help="grace of the Quix tumbling window (default %(default)s: no drops)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS,
                        help="where the JSON, PNG and logs go (default bench/results)")
    parser.add_argument("--warmup-events", type=int, default=1_000_000,
                        help="before the variants, a worker of its own group takes this many "
                        "events, so that the broker has compiled its transaction paths, as "
                        "a production broker has (default %%(default)s; 0: a cold broker)")
    restart = parser.add_argument_group("restart (instead of the comparison)")
    restart.add_argument("--restart", action="store_true",
                         help="run only the restart measurement: the worker takes --events "
                         "preloaded events, is killed with SIGKILL, and a new one starts")
    restart.add_argument("--restart-new-events", type=int, default=2_000,
                         help="events produced while the worker is down (default %(default)s)")
    restart.add_argument("--restart-settle", type=float, default=12.0, metavar="SECONDS",
                         help="after the preload is taken, the worker idles this long "
                         "(RSS sampled every second) before the kill (default %(default)s)")
    restart.add_argument("--restart-new-disk", action="store_true",
                         help="delete the worker's STATE_DIR before the restart, as on a new "
                         "machine: the restart rebuilds its local state from the changelogs")
    soak = parser.add_argument_group("soak (instead of the comparison)")
    soak.add_argument("--soak-minutes", type=float, default=None,
                      help="run only the soak: the worker under a live producer this long")
    soak.add_argument("--soak-rate", type=float, default=50_000.0,
                      help="events per wall second in the soak (default %(default)s)")
    soak.add_argument("--soak-producers", type=int, default=1,
                      help="producer processes sharing the soak rate (default %(default)s)")
    soak.add_argument("--soak-interval", type=float, default=5.0,
                      help="seconds between RSS samples (default %(default)s)")
    return parser


def _on_sigterm(signum: int, frame: object) -> None:
    raise Interrupted()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chosen = [v.strip() for v in args.variants.split(",") if v.strip() not in ("", "none")]
    if args.restart:
        chosen = []  # the restart measurement instead of the comparison
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        console.print(f"unknown variant(s) {unknown}; choose from {list(ORDER)}")
        return 2
    if args.events < 1 or args.warmup_events < 0:
        console.print("--events must be at least 1 and --warmup-events at least 0")
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir: Path = args.output_dir
    logs = out_dir / f"{stamp}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="mm-bench-"))
    base = Settings()
    if args.ingest_processes is None:
        args.ingest_processes = (
            base.ingest_processes if "INGEST_PROCESSES" in os.environ
            else min(os.cpu_count() or 1, args.partitions or base.events_partitions)
        )
    processes = Processes()
    broker = None
    result: dict[str, Any] = {
        "started_at": stamp, "command": " ".join(["python -m bench", *(argv or sys.argv[1:])]),
        "machine": machine(), "versions": versions(), "interrupted": False,
    }
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    # Ctrl-C stops the run even if SIGINT came ignored (e.g. started with `&` by a script)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    run_id = uuid.uuid4().hex[:8]
    ctx = Context(args, base, run_id, workdir, logs, processes,
                  timeout=args.timeout or 120.0 + args.events / 1000.0)
    outcomes: list[Outcome] = []
    try:
        if base.kafka_bootstrap_servers:
            result["broker"] = {"bootstrap": "KAFKA_BOOTSTRAP_SERVERS (external)",
                                "version": "unknown (external)"}
            result["versions"]["kafka_broker"] = None
        else:
            from deploy.local_kafka import LocalKafka

            # Kafka's default first-join delay, as a production broker has it. With the
            # tests' 0, a variant's consumers that start together (our worker's ingest
            # processes) join one by one: the first takes every partition and the
            # second's join revokes them mid-run (a 1.5 s stall in a 9 s run, or none,
            # by a race: 107k against 137k events/s in two runs of the same code).
            broker = LocalKafka(base.cache_dir, initial_rebalance_delay_ms=3000)
            processes.adopt(broker, broker.stop)
            console.log("starting a local Kafka broker")
            broker.start()
            base = Settings(**{**base.model_dump(),
                               "kafka_bootstrap_servers": broker.bootstrap_servers})
            ctx.base = base
            ctx.broker_pid = broker.pid
            result["broker"] = {"bootstrap": "local (deploy.local_kafka)",
                                "version": result["versions"]["kafka_broker"], "pid": broker.pid}
        if args.soak_minutes:
            result["soak"] = run_soak(ctx)
        elif args.restart or chosen:
            preload_settings = ctx.settings("preload")
            result["preload"] = preload(ctx, preload_settings)
            topic = preload_settings.events_topic
            if args.restart:
                result["restart"] = run_restart(ctx, topic, result["preload"])
            elif args.warmup_events and "worker" in chosen:
                result["warmup"] = asdict(warm_up_broker(ctx, topic))
            for name in chosen:
                console.rule(f"{name}: {VARIANTS[name]}")
                load = loadavg()
                outcome = _attempt(name, VARIANTS[name], partial(RUNNERS[name], ctx, topic))
                outcome.info["loadavg_before"] = load  # others' load skews the numbers
                outcomes.append(outcome)
                console.log(report.one_line(outcome))
        if not args.soak_minutes and not args.restart and not args.skip_freshness:
            console.rule("freshness: messaging-metrics worker, live producer")
            load = loadavg()
            try:
                result["freshness"] = run_freshness(ctx)
                result["freshness"]["loadavg_before"] = load
            except (KeyboardInterrupt, Interrupted):
                raise
            except Exception as exc:  # noqa: BLE001
                result["freshness"] = {"status": "failed", "reason": str(exc)}
    except (KeyboardInterrupt, Interrupted):
        result["interrupted"] = True
        console.print("[yellow]interrupted: stopping every process the bench started[/]")
    finally:
        processes.stop_all()
        if base.kafka_bootstrap_servers and broker is None:
            try:
                asyncio.run(_delete_topics(base, run_id))
            except Exception as exc:  # noqa: BLE001
                console.print(f"could not delete this run's topics: {exc}")
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    _add_ratios(outcomes)
    result["variants"] = [asdict(o) for o in outcomes]
    json_path = out_dir / f"{stamp}.json"
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    png_path = report.chart(result, out_dir / f"{stamp}.png")
    report.show(result, Console(width=max(132, shutil.get_terminal_size().columns)))
    console.print(f"results: {json_path}" + (f" and {png_path}" if png_path else ""))
    console.print(f"logs: {logs}")
    if result["interrupted"]:
        return 130
    failed = [o for o in outcomes if o.status == "failed"]
    return 1 if failed or result.get("freshness", {}).get("status") == "failed" else 0


def _add_ratios(outcomes: list[Outcome]) -> None:
    ceiling = next((o for o in outcomes if o.name == "ceiling" and o.events_per_second), None)
    if ceiling is None:
        return
    for outcome in outcomes:
        if outcome.events_per_second:
            outcome.ratio_to_ceiling = outcome.events_per_second / ceiling.events_per_second


async def _delete_topics(settings: Settings, run_id: str) -> None:
    """Only on an external broker: every topic this run created has its id in its name."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if f"bench-{run_id}" in t]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()
