"""Pipeline-health metrics of the worker (counters and gauges on an injected registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streams.events import EVENT_TYPES, REJECTION_REASONS


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
        # zero series exist from the start, so rate() works from the first scrape
        for event_type in EVENT_TYPES:
            self.events_processed.labels(event_type)
        for reason in REJECTION_REASONS:
            self.invalid_events.labels(reason)

    def record_batch(
        self,
        events: int,
        processed: dict[str, int],
        invalid: dict[str, int],
        late: int,
        seconds: float,
    ) -> None:
        """Counted only after the batch's transaction committed: never double-counted."""
        for event_type, count in processed.items():
            self.events_processed.labels(event_type).inc(count)
        for reason, count in invalid.items():
            self.invalid_events.labels(reason).inc(count)
        if late:
            self.late_events.inc(late)
        if events:
            self.batch_size.observe(events)
            self.batch_seconds.observe(seconds)
