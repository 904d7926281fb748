"""The worker's health metrics add up the reports of all its ingests."""

from __future__ import annotations

import pickle

from prometheus_client import CollectorRegistry

from streams.kafka.outage import OutageReport
from streams.pipeline_metrics import BatchReport, PipelineMetrics


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_counters_add_and_gauges_sum_the_latest_report_of_each_ingest() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    metrics.record_batch(BatchReport("0", 10, 0.1, lag=500, owned=2,
                                     processed={"message_sent": 9}, invalid={"wrong_type": 1},
                                     store={"memtables": 4_000, "sst_files": 9_000},
                                     event_ids=900, event_ids_bytes=45_000))
    metrics.record_batch(BatchReport("1", 5, 0.1, lag=70, owned=2,
                                     processed={"message_sent": 4, "message_read": 1}, late=2,
                                     store={"memtables": 1_000, "sst_files": 500},
                                     event_ids=40, event_ids_bytes=2_000))
    metrics.record_batch(BatchReport("0", 0, 0.2, lag=300, owned=1,  # an empty poll
                                     store={"memtables": 3_000, "sst_files": 8_000},
                                     event_ids=800, event_ids_bytes=40_000))

    assert value(registry, "messaging_events_processed_total", type="message_sent") == 13
    assert value(registry, "messaging_events_processed_total", type="message_read") == 1
    assert value(registry, "messaging_invalid_events_total", reason="wrong_type") == 1
    assert value(registry, "messaging_late_events_total") == 2
    # the latest of each ingest, summed: 300 + 70 and 1 + 2
    assert value(registry, "messaging_consumer_lag_messages") == 370
    assert value(registry, "messaging_owned_partitions", stage="ingest") == 3
    assert value(registry, "messaging_state_store_bytes", stage="ingest", part="memtables") == 4_000
    assert value(registry, "messaging_state_store_bytes", stage="ingest", part="sst_files") == 8_500
    assert value(registry, "messaging_state_store_bytes", stage="ingest", part="block_cache") == 0
    assert value(registry, "messaging_event_ids") == 840
    assert value(registry, "messaging_event_ids_memory_bytes") == 42_000
    # an empty poll is not a batch
    assert value(registry, "messaging_ingest_batch_size_events_count") == 2


def test_a_report_crosses_a_process_boundary_intact() -> None:
    report = BatchReport("3", 7, 0.5, 1, 4, {"message_sent": 7}, {}, 0)
    assert pickle.loads(pickle.dumps(report)) == report


def test_an_outage_counts_once_and_its_gauge_is_the_longest_of_the_stages_processes() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry)
    metrics.record(OutageReport("ingest", "0", since=1000.0))
    metrics.record(OutageReport("ingest", "1", since=1004.0))
    metrics.record(OutageReport("ingest", "0", since=1000.0))  # told again: the same outage
    assert metrics.outage_seconds("ingest", now=1010.0) == 10.0
    assert metrics.outage_seconds("risk", now=1010.0) == 0.0
    assert value(registry, "messaging_kafka_outages_total", stage="ingest") == 2
    assert value(registry, "messaging_kafka_outages_total", stage="risk") == 0
    metrics.record(OutageReport("ingest", "0", since=None))
    assert metrics.outage_seconds("ingest", now=1010.0) == 6.0
    metrics.record(OutageReport("ingest", "1", since=None))
    assert value(registry, "messaging_kafka_outage_seconds", stage="ingest") == 0.0
