"""Pipeline-health metrics of the worker (counters and gauges on an injected registry)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streams.events import EVENT_TYPES, REJECTION_REASONS
from streams.kafka.outage import OutageReport
from streams.store.partition_store import USAGE_PARTS

STAGES = ("ingest", "risk")  # the batch stages, which report their outages


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one committed ingest transaction did, as an ingest (in this process or a
    child process) reports it; plain data, so it crosses a pipe."""

    source: str  # which ingest: "" in-process, else the child's index
    events: int
    seconds: float
    lag: int  # messages of its partitions not yet processed
    owned: int  # events partitions it owns
    processed: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, int] = field(default_factory=dict)
    late: int = 0
    # its partitions' local state (RocksDB), by part (streams.store.partition_store.USAGE_PARTS)
    store: dict[str, int] = field(default_factory=dict)
    event_ids: int = 0  # its partitions' event ids within the dedup horizon
    event_ids_bytes: int = 0  # what they take in memory


class PipelineMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events_processed = Counter(
            "messaging_events_processed", "Valid events counted into windows.", ["type"],
            registry=registry,
        )
        self.invalid_events = Counter(
            "messaging_invalid_events", "Input rejected to the DLQ, by reason.", ["reason"],
            registry=registry,
        )
        self.late_events = Counter(
            "messaging_late_events",
            "Events that arrived after their window closed (counted here, not in windows).",
            registry=registry,
        )
        self.batch_size = Histogram(
            "messaging_ingest_batch_size_events", "Events per ingest batch.",
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000, 50000),
            registry=registry,
        )
        self.batch_seconds = Histogram(
            "messaging_ingest_batch_duration_seconds",
            "Wall time to process and commit one ingest batch.",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "messaging_consumer_lag_messages",
            "Messages in the events topic not yet processed by this worker's ingest.",
            registry=registry,
        )
        self.owned_partitions = Gauge(
            "messaging_owned_partitions",
            "Partitions this worker owns, by stage (ingest: events; aggregate: partials; "
            "risk: sender activity).",
            ["stage"], registry=registry,
        )
        self.kafka_outages = Counter(
            "messaging_kafka_outages",
            "Outages by stage: times a stage lost Kafka (then held its watermark and "
            "retried from its last commit).",
            ["stage"], registry=registry,
        )
        outage_seconds = Gauge(
            "messaging_kafka_outage_seconds",
            "How long a stage has been without Kafka (0: it has Kafka); the longest of "
            "its processes.",
            ["stage"], registry=registry,
        )
        self.state_store_bytes = Gauge(
            "messaging_state_store_bytes",
            "The local state (RocksDB) of the partitions this worker owns, by stage "
            "(ingest, risk) and part: memory (memtables, block_cache, table_readers) and "
            "disk (sst_files).",
            ["stage", "part"], registry=registry,
        )
        self._stores: dict[str, dict[str, int]] = {}  # ingest source -> its last report's
        for part in USAGE_PARTS:
            self.state_store_bytes.labels("ingest", part).set_function(
                lambda part=part: sum(store.get(part, 0) for store in self._stores.values())
            )
        self._event_ids: dict[str, tuple[int, int]] = {}  # ingest source -> (ids, bytes)
        for index, (name, documentation) in enumerate((
            ("messaging_event_ids", ("Event ids remembered within the dedup horizon, of the "
             "events partitions this worker owns (duplicates of them are rejected).")),
            ("messaging_event_ids_memory_bytes", ("What the remembered event ids take in "
             "memory (a fingerprint and a ts each; the ids themselves are in the local state).")),
        )):
            Gauge(name, documentation, registry=registry).set_function(
                lambda index=index: sum(latest[index] for latest in self._event_ids.values())
            )
        self._outages: dict[tuple[str, str], float] = {}  # (stage, source) -> since
        for stage in STAGES:
            self.kafka_outages.labels(stage)
            outage_seconds.labels(stage).set_function(
                lambda stage=stage: self.outage_seconds(stage)
            )
        self._lag: dict[str, int] = {}
        self._owned: dict[str, int] = {}
        # zero series exist from the start, so rate() works from the first scrape
        for event_type in EVENT_TYPES:
            self.events_processed.labels(event_type)
        for reason in REJECTION_REASONS:
            self.invalid_events.labels(reason)

    def record(self, report: BatchReport | OutageReport) -> None:
        """What a stage reports: a committed batch, or an outage beginning or ending."""
        if isinstance(report, OutageReport):
            self.record_outage(report)
        else:
            self.record_batch(report)

    def record_outage(self, report: OutageReport) -> None:
        key = (report.stage, report.source)
        if report.since is None:
            self._outages.pop(key, None)
        elif key not in self._outages:
            self._outages[key] = report.since
            self.kafka_outages.labels(report.stage).inc()

    def outage_seconds(self, stage: str, now: float | None = None) -> float:
        since = [t for (s, _), t in self._outages.items() if s == stage]
        return max(0.0, (now or time.time()) - min(since)) if since else 0.0

    def record_batch(self, report: BatchReport) -> None:
        """Counted only after the batch's transaction committed: never double-counted."""
        for event_type, count in report.processed.items():
            self.events_processed.labels(event_type).inc(count)
        for reason, count in report.invalid.items():
            self.invalid_events.labels(reason).inc(count)
        if report.late:
            self.late_events.inc(report.late)
        if report.events:
            self.batch_size.observe(report.events)
            self.batch_seconds.observe(report.seconds)
        # gauges of the whole worker: the sum over its ingests' latest reports
        self._lag[report.source] = report.lag
        self._owned[report.source] = report.owned
        self._stores[report.source] = report.store
        self._event_ids[report.source] = (report.event_ids, report.event_ids_bytes)
        self.consumer_lag.set(sum(self._lag.values()))
        self.owned_partitions.labels("ingest").set(sum(self._owned.values()))
