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
    ANSWERS,
    CHANNELS,
    CONTENT_TYPES,
    ENTRY_POINTS,
    PLATFORMS,
    SENDER_TYPES,
    SPAM_REASONS,
)
from streams.partials import ACTIVE_SENDERS as ACTIVE_SENDER_KEY
from streams.partials import (
    ANSWER,
    BLOCK,
    COHORT_LATENCY_SUM_MS,
    COHORT_REPLY,
    COHORT_STARTED,
    FIRST_REPLY,
    FLAGGED,
    HORIZON_BUCKET,
    INMAIL_RESPONSE,
    INMAIL_SENT,
    LATENCY_BOUNDS_SECONDS,
    LATENCY_BUCKET,
    LATENCY_SUM_MS,
    READ,
    REPLY_HORIZONS,
    SENT,
    SPAM,
    STARTED,
    UNKNOWN_CHANNEL,
    Key,
)

WINDOW_END = "messaging_window_end_timestamp_seconds"
ACTIVE_SENDERS = "messaging_active_senders"
# Rollups of the minute windows: the same gauges under names of their own (a label
# would let every sum() over a metric add minutes, hours and days together).
RESOLUTIONS = ("minute", "hour", "day")
ROLLUP_SECONDS = {"hour": 3600, "day": 86_400}
COHORT_SECONDS = ROLLUP_SECONDS  # cohorts of an hour's or a day's starts
_PREFIX = {"minute": "", "hour": "hourly_", "day": "daily_"}
PERIODS = {"minute": "window", "hour": "hour", "day": "day"}  # for help texts and logs
# Distinct senders over the trailing days that end with a closed day: (name, days)
TRAILING_ACTIVE = (
    ("messaging_weekly_active_senders", 7),
    ("messaging_monthly_active_senders", 28),
)


def named(name: str, resolution: str) -> str:
    """The name of a window gauge at a resolution: ``messaging_daily_messages_sent``."""
    return name.replace("messaging_", "messaging_" + _PREFIX[resolution], 1)

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
    ("messaging_inmail_answers",
     "InMail answers without a reply (accepted or declined) in the last closed window.",
     ANSWER, ("answer",), (ANSWERS,)),
    (FLAGGED_SENDERS, "Senders flagged by a risk rule in the last closed window.", FLAGGED,
     ("reason",), (RISK_RULES,)),
)
LATENCY = "messaging_reply_latency_seconds"


def window_families(
    counts: Mapping[Key, int], window_end: float | None, resolution: str = "minute",
    every_series: bool = False,
) -> Iterator[Metric]:
    """Prometheus metric families for one window's merged counters. The spam reports of
    an unknown channel are left out while zero, unless ``every_series``."""
    period = PERIODS[resolution]
    for name, doc, prefix, labels, values in COUNT_GAUGES:
        if resolution != "minute" and name == FLAGGED_SENDERS:
            continue  # the risk stage's, per window only
        family = GaugeMetricFamily(
            named(name, resolution), doc.replace("window", period), labels=list(labels)
        )
        for combo in product(*values):
            value = counts.get((prefix, *combo), 0)
            if value or every_series or UNKNOWN_CHANNEL not in combo:
                family.add_metric(list(combo), value)
        yield family
    latency = GaugeHistogramMetricFamily(
        named(LATENCY, resolution), f"First-reply latency in the last closed {period}.",
        labels=["channel"],
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
        named(ACTIVE_SENDERS, resolution),
        f"Distinct senders in the last closed {period} (CPC sketch estimate).",
    )
    active.add_metric([], counts.get((ACTIVE_SENDER_KEY,), 0))
    yield active
    if resolution == "day":
        for name, days in TRAILING_ACTIVE:
            trailing = GaugeMetricFamily(
                name, f"Distinct senders over the {days} days ending with the last closed "
                "day (CPC sketch estimate).",
            )
            trailing.add_metric([], counts.get((ACTIVE_SENDER_KEY, f"{days}d"), 0))
            yield trailing
    if window_end is not None:
        end = GaugeMetricFamily(
            named(WINDOW_END, resolution), f"Event-time end of the last closed {period}."
        )
        end.add_metric([], window_end)
        yield end


def window_samples(
    counts: Mapping[Key, int], window_end: float | None, resolution: str = "minute",
    every_series: bool = False,
) -> list[list[Any]]:
    """Flat ``[sample name, labels, value]`` triples, as /metrics would show them."""
    return [
        [sample.name, dict(sample.labels), sample.value]
        for family in window_families(counts, window_end, resolution, every_series)
        for sample in family.samples
    ]


# --- cohorts -------------------------------------------------------------------------------
# (kind, resolution, horizon or None, cohort start, counts): one cohort's values to render
CohortItem = tuple[str, str, "str | None", int, Mapping[Key, int]]
COHORT_STATUSES = ("final", "provisional")
RESPONSES = ("replied", *ANSWERS)


def cohort_families(status: str, items: list[CohortItem]) -> Iterator[Metric]:
    """The cohort gauges of one status for any number of cohorts. ``final``: each item
    is a cohort final for its horizon. ``provisional`` (horizon None): the newest ended
    cohort's counts so far, for every horizon."""
    final = status == "final"
    by_horizon = ["resolution", "horizon", "channel"]
    conversations = GaugeMetricFamily(
        f"messaging_{status}_cohort_conversations",
        f"Conversations started in the cohort ({status}).",
        labels=by_horizon if final else ["resolution", "channel"],
    )
    replies = GaugeMetricFamily(
        f"messaging_{status}_cohort_first_replies",
        f"Of the cohort's conversations, those with a first reply within the horizon ({status}).",
        labels=by_horizon,
    )
    latency = GaugeHistogramMetricFamily(
        f"messaging_{status}_cohort_reply_latency_seconds",
        f"Time to first reply of the cohort's conversations, within the horizon ({status}).",
        labels=by_horizon if final else ["resolution", "channel"],
    )
    starts = GaugeMetricFamily(
        f"messaging_{status}_cohort_start_timestamp_seconds",
        f"Start of the cohort the {status} values are of (event time).",
        labels=["resolution", "horizon"] if final else ["resolution"],
    )
    sent = GaugeMetricFamily(
        f"messaging_{status}_inmail_cohort_sent", f"InMails sent in the cohort's day ({status}).",
        labels=["sender_type"],
    )
    responses = GaugeMetricFamily(
        f"messaging_{status}_inmail_cohort_responses",
        f"Of the cohort's InMails, those with a first response (a reply, or accepted or "
        f"declined) within the InMail horizon ({status}).",
        labels=["sender_type", "response"],
    )
    inmail_start = GaugeMetricFamily(
        f"messaging_{status}_inmail_cohort_start_timestamp_seconds",
        f"Start of the InMail cohort (a day) the {status} values are of (event time).",
    )
    for kind, resolution, horizon, start, counts in items:
        if kind == "inmail":
            for sender_type in SENDER_TYPES:
                sent.add_metric([sender_type], counts.get((INMAIL_SENT, sender_type), 0))
                for response in RESPONSES:
                    responses.add_metric(
                        [sender_type, response],
                        counts.get((INMAIL_RESPONSE, sender_type, response), 0),
                    )
            inmail_start.add_metric([], start)
            continue
        horizons = [horizon] if horizon is not None else list(REPLY_HORIZONS)
        head = [resolution, horizon] if final else [resolution]
        starts.add_metric(head, start)
        for channel in CHANNELS:
            conversations.add_metric([*head, channel], counts.get((COHORT_STARTED, channel), 0))
            for name in horizons:
                limit = HORIZON_BUCKET[name]
                replied = sum(counts.get((COHORT_REPLY, channel, str(i)), 0)
                              for i in range(limit + 1))
                replies.add_metric([resolution, name, channel], replied)
            cumulative, total_ms, buckets = 0, 0, []
            limit = HORIZON_BUCKET[horizons[-1]]
            for index, bound in enumerate(LATENCY_BOUNDS_SECONDS):
                if index <= limit:
                    cumulative += counts.get((COHORT_REPLY, channel, str(index)), 0)
                    total_ms += counts.get((COHORT_LATENCY_SUM_MS, channel, str(index)), 0)
                buckets.append((str(float(bound)), cumulative))
            buckets.append(("+Inf", cumulative))
            latency.add_metric([*head, channel], buckets, total_ms / 1000)
    yield from (conversations, replies, latency, starts, sent, responses, inmail_start)


def cohort_samples(kind: str, status: str, resolution: str, horizon: str | None,
                   counts: Mapping[Key, int], start: int) -> list[list[Any]]:
    """One cohort's samples, as /metrics would show them (families with none left out)."""
    return [
        [sample.name, dict(sample.labels), sample.value]
        for family in cohort_families(status, [(kind, resolution, horizon, start, counts)])
        for sample in family.samples
    ]
