"""The window gauges of the metric contract, rendered from merged counters.

One renderer serves both the worker's ``/metrics`` and the records published to
``messaging.metrics``, so the two cannot disagree. Label sets are full cross-products
of the contract's enumerations (zeros included), so every series exists in every
window and dashboards never confuse "no data" with zero.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from itertools import product
from typing import Any

from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric

from streams.events import (
    CHANNELS,
    CONTENT_TYPES,
    ENTRY_POINTS,
    PLATFORMS,
    SENDER_TYPES,
    SPAM_REASONS,
)
from streams.partials import ACTIVE_SENDERS as ACTIVE_SENDER_KEY
from streams.partials import (
    BLOCK,
    FIRST_REPLY,
    FLAGGED,
    LATENCY_BOUNDS_SECONDS,
    LATENCY_BUCKET,
    LATENCY_SUM_MS,
    READ,
    SENT,
    SPAM,
    STARTED,
    UNKNOWN_CHANNEL,
    Key,
)

WINDOW_END = "messaging_window_end_timestamp_seconds"
ACTIVE_SENDERS = "messaging_active_senders"
FLAGGED_SENDERS = "messaging_flagged_senders"
RISK_RULES = ("velocity", "spam_reports", "inmail_response")  # streams.risk.rules.RULES

# (metric name, help, counter key prefix, label names, label value enumerations)
COUNT_GAUGES: tuple[tuple[str, str, str, tuple[str, ...], tuple[tuple[str, ...], ...]], ...] = (
    ("messaging_messages_sent", "Messages sent in the last closed window.", SENT,
     ("platform", "channel", "sender_type", "content_type"),
     (PLATFORMS, CHANNELS, SENDER_TYPES, CONTENT_TYPES)),
    ("messaging_conversations_started", "Conversations started in the last closed window.",
     STARTED, ("platform", "channel", "entry_point"), (PLATFORMS, CHANNELS, ENTRY_POINTS)),
    ("messaging_first_replies", "First replies received in the last closed window.",
     FIRST_REPLY, ("channel",), (CHANNELS,)),
    ("messaging_messages_read", "Read receipts in the last closed window.", READ,
     ("platform",), (PLATFORMS,)),
    ("messaging_spam_reports",
     "Spam reports in the last closed window, by the reported conversation's channel.",
     SPAM, ("channel", "reason"), ((*CHANNELS, UNKNOWN_CHANNEL), SPAM_REASONS)),
    ("messaging_blocks", "Members blocked in the last closed window.", BLOCK,
     ("platform",), (PLATFORMS,)),
    (FLAGGED_SENDERS, "Senders flagged by a risk rule in the last closed window.", FLAGGED,
     ("reason",), (RISK_RULES,)),
)
LATENCY = "messaging_reply_latency_seconds"


def window_families(counts: Mapping[Key, int], window_end: float | None) -> Iterator[Metric]:
    """Prometheus metric families for one window's merged counters."""
    for name, doc, prefix, labels, values in COUNT_GAUGES:
        family = GaugeMetricFamily(name, doc, labels=list(labels))
        for combo in product(*values):
            value = counts.get((prefix, *combo), 0)
            if value or UNKNOWN_CHANNEL not in combo:
                family.add_metric(list(combo), value)
        yield family
    latency = GaugeHistogramMetricFamily(
        LATENCY, "First-reply latency in the last closed window.", labels=["channel"]
    )
    for channel in CHANNELS:
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for index, bound in enumerate((*LATENCY_BOUNDS_SECONDS, "+Inf")):
            cumulative += counts.get((LATENCY_BUCKET, channel, str(index)), 0)
            buckets.append((str(float(bound)) if bound != "+Inf" else "+Inf", cumulative))
        total_seconds = counts.get((LATENCY_SUM_MS, channel), 0) / 1000
        latency.add_metric([channel], buckets, total_seconds)
    yield latency
    active = GaugeMetricFamily(
        ACTIVE_SENDERS, "Distinct senders in the last closed window (CPC sketch estimate)."
    )
    active.add_metric([], counts.get((ACTIVE_SENDER_KEY,), 0))
    yield active
    if window_end is not None:
        end = GaugeMetricFamily(WINDOW_END, "Event-time end of the last closed window.")
        end.add_metric([], window_end)
        yield end


def window_samples(counts: Mapping[Key, int], window_end: float | None) -> list[list[Any]]:
    """Flat ``[sample name, labels, value]`` triples, as /metrics would show them."""
    return [
        [sample.name, dict(sample.labels), sample.value]
        for family in window_families(counts, window_end)
        for sample in family.samples
    ]
