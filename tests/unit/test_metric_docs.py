"""docs/metrics.md stays in step with the code: every exported metric, every event-time
family the history writes and every recording rule is catalogued, and every
``messaging_…`` / ``messaging:…`` name in it exists."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from deploy import event_time
from streams import catalogue
from streams.aggregate.exposition import WindowCollector
from streams.history.stage import HistoryMetrics
from streams.pipeline_metrics import PipelineMetrics
from tests.prometheus_rules import recording_rule_names

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
# a metric or rule name, not part of a longer name (topic names use dots, not matched)
NAME = re.compile(r"(?<![\w:])messaging[_:][A-Za-z0-9_:]*[A-Za-z0-9]")
GAUGE_HISTOGRAM_SUFFIXES = ("_bucket", "_gsum", "_gcount")


def window_gauge_names() -> set[str]:
    """Every product gauge: minute windows, their hour and day rollups, the trailing
    actives, and the cohorts' (final and provisional)."""
    minute = {entry[0] for entry in catalogue.COUNT_GAUGES}
    minute |= {catalogue.LATENCY, catalogue.WINDOW_END, catalogue.ACTIVE_SENDERS}
    rollups = {
        catalogue.named(name, resolution) for name in minute - {catalogue.FLAGGED_SENDERS}
        for resolution in ("hour", "day")
    }
    trailing = {name for name, _ in catalogue.TRAILING_ACTIVE}
    cohorts = {
        family.name for status in catalogue.COHORT_STATUSES
        for family in catalogue.cohort_families(status, [])
    }
    return minute | rollups | trailing | cohorts


def event_time_names() -> tuple[set[str], set[str]]:
    """(the event-time families to document, every event-time name that may be
    mentioned: their gauge histograms' samples too)."""
    every = event_time.event_time_names()
    families = {name for name in every if not name.endswith(GAUGE_HISTOGRAM_SUFFIXES)}
    return families, every


def pipeline_names() -> tuple[set[str], set[str]]:
    """(names to document, every sample name that may be mentioned)."""
    registry = CollectorRegistry()
    PipelineMetrics(registry)
    HistoryMetrics(registry)
    families = list(registry.collect())
    # the aggregate side's late counter is exported by the /metrics collector itself
    families += list(WindowCollector(list, 60).collect())
    documented, samples = set(), set()
    for family in families:
        # prometheus_client drops "_total" from a counter's family name
        documented.add(family.name + "_total" if family.type == "counter" else family.name)
        samples |= {s.name for s in family.samples if not s.name.endswith("_created")}
    return documented, samples


# a family of names by its prefix, as `messaging_eventtime_*`
PREFIX = re.compile(r"(?<![\w:])(messaging_[A-Za-z0-9_]*_)\*")


def doc_names() -> set[str]:
    return set(NAME.findall(PREFIX.sub("", DOC.read_text())))


def doc_prefixes() -> set[str]:
    return set(PREFIX.findall(DOC.read_text()))


def test_every_metric_and_rule_is_documented() -> None:
    documented_pipeline, _ = pipeline_names()
    required = (window_gauge_names() | event_time_names()[0] | documented_pipeline
                | set(recording_rule_names()))
    missing = sorted(required - doc_names())
    assert not missing, f"not in {DOC.name}: {missing}"


def test_no_stale_names_in_the_doc() -> None:
    gauges = window_gauge_names()
    documented_pipeline, pipeline_samples = pipeline_names()
    histograms = {name for name in gauges if name.endswith("latency_seconds")}
    known = (
        gauges
        | {name + suffix for name in histograms for suffix in GAUGE_HISTOGRAM_SUFFIXES}
        | documented_pipeline
        | pipeline_samples
        | set(recording_rule_names())
        | event_time_names()[1]
    )
    stale = sorted(doc_names() - known)
    assert not stale, f"named in {DOC.name} but exported by nothing: {stale}"
    stale_prefixes = sorted(prefix for prefix in doc_prefixes()
                            if not any(name.startswith(prefix) for name in known))
    assert not stale_prefixes, f"prefixes in {DOC.name} of no name: {stale_prefixes}"
