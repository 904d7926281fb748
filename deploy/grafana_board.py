"""The provisioned Grafana board, generated from compact panel definitions.

``python -m deploy.grafana_board`` writes ``grafana/dashboards/messaging-metrics.json``
(``--check`` only compares); a unit test holds the committed file equal to
:func:`build_dashboard`. :func:`panel_queries` gives every panel's PromQL with the
template variables filled in, so a test can evaluate each against a live Prometheus.

Thresholds are drawn at the absolute alert thresholds of ``prometheus/thresholds.yml``,
the one place they live (read through :mod:`deploy.prometheus_rules`).

Which series a panel reads. Time series of window metrics read the event-time history
(``messaging_eventtime_*``: every window, summed over all workers, at its end), their
PromQL derived from the recording rules by :mod:`deploy.event_time`: a graph of the live
gauges would add one worker's window to another's next one between scrapes, and keep one
of the many windows closed between two scrapes. Stats show "now" and read the live gauges
and rules (see :func:`stat`), except the last-24-hours totals, which only the history can
give. Cohorts are not in the history: their panels read the live gauges.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from deploy.event_time import FILTERS, LAST_DAY, filters_of, over_history, recording_rules
from deploy.prometheus_rules import load_thresholds

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_PATH = ROOT / "grafana" / "dashboards" / "messaging-metrics.json"

UID = "messaging-metrics"
DATASOURCE = {"type": "prometheus", "uid": "messaging-prometheus"}
SCHEMA_VERSION = 39  # Grafana 11.0; newer 11.x migrate it on load

# The absolute alert thresholds the board draws (prometheus/thresholds.yml). Reply rate,
# InMail response and p95 latency alert relative to the day before, so they have no line.
DRAWN_THRESHOLDS = (
    "spam_reports_per_1k_warning", "spam_reports_per_1k_critical", "consumer_lag_high_messages",
    "inmail_response_policy_min",
)
# panel title -> the thresholds its steps are drawn at, in step order
THRESHOLD_PANELS: dict[str, tuple[str, ...]] = {
    "Spam reports per 1k messages": (
        "spam_reports_per_1k_warning", "spam_reports_per_1k_critical"),
    "Spam reports per 1k messages by channel": (
        "spam_reports_per_1k_warning", "spam_reports_per_1k_critical"),
    "Consumer lag": ("consumer_lag_high_messages",),
    "30-day InMail response rate (recruiters)": ("inmail_response_policy_min",),
}
# values of Grafana's built-in variables when a query is evaluated outside Grafana
BUILTIN_VARIABLES = {
    "__rate_interval": "1m", "__interval": "15s", "__interval_ms": "15000",
    "__range": "1h", "__range_s": "3600", "__range_ms": "3600000",
}

PLATFORM = 'platform=~"$platform"'
CHANNEL = 'channel=~"$channel"'
SENT = f"messaging_messages_sent{{{PLATFORM}, {CHANNEL}}}"
STARTED = f"messaging_conversations_started{{{PLATFORM}, {CHANNEL}}}"
LIVE_NOTE = (" Live gauge: each worker's most recently closed window, as scraped now (what"
             " the alerts read).")
HISTORY_NOTE = (" Event-time history: every window summed over all workers, drawn from its"
                " end (event time) to the next one's; none mixed with another or missed.")
BATCH_P95 = ("histogram_quantile(0.95, sum by (le) "
             "(rate(messaging_ingest_batch_duration_seconds_bucket[$__rate_interval])))")
HISTORY_WRITES = ("sum by (resolution) "
                  "(rate(messaging_history_windows_written_total[$__rate_interval]))")
ALL_TRAFFIC = " All platforms and channels (recording rule; the filters do not apply)."

Target = tuple[str, str]  # (expr, legend)


class HistoryTarget(NamedTuple):
    expr: str  # PromQL over the event-time history
    legend: str
    filters: tuple[str, ...]  # the board filters it takes


def history_target(source: str, legend: str, **options: str) -> HistoryTarget:
    """``source`` (a recording rule's name, or PromQL over the live window gauges, the
    board's filters left out) over the event-time history, the filters added where they
    apply; ``options`` go to :func:`deploy.event_time.over_history`."""
    expr = recording_rules()[source] if source.startswith("messaging:") else source
    return HistoryTarget(over_history(expr, **options), legend, filters_of(expr))


def last_day(source: str, legend: str) -> HistoryTarget:
    """The windows that ended in the last 24 hours, added up: exact at any instant (a
    day gauge is a day's total only at the day's end)."""
    return history_target(source, legend, function="sum_over_time", range_=LAST_DAY)


# --- panels ---------------------------------------------------------------------------
def _targets(targets: Sequence[Target]) -> list[dict[str, Any]]:
    return [
        {"datasource": DATASOURCE, "refId": chr(ord("A") + i), "expr": expr,
         "legendFormat": legend, "range": True, "instant": False, "editorMode": "code"}
        for i, (expr, legend) in enumerate(targets)
    ]


def _steps(above: Sequence[float] = (), below: float | None = None) -> dict[str, Any]:
    """Threshold steps: green, then orange/red at each value of ``above``; or red
    under ``below`` and green from it."""
    if below is not None:
        steps = [{"color": "red", "value": None}, {"color": "green", "value": below}]
    else:
        colors = ("orange", "red")[-len(above):] if above else ()
        steps = [{"color": "green", "value": None}]
        steps += [{"color": c, "value": v} for c, v in zip(colors, above, strict=True)]
    return {"mode": "absolute", "steps": steps}


def stat(title: str, description: str, targets: Sequence[Target], unit: str = "short",
         steps: dict[str, Any] | None = None, width: int = 4) -> dict[str, Any]:
    """A stat: the newest value. Stats of a window stay on the live gauges and rules: the
    live gauge holds the last closed window from the moment it closes, is there at every
    instant, and is what the alerts (and so the drawn alert thresholds) read; a window's
    event-time sample is stamped at its end, a window plus its closing delay in the past
    (a day for the daily ones). One number at one instant is not where mixed windows and
    missed windows show; a graph over time is."""
    return {
        "type": "stat", "title": title, "description": description, "datasource": DATASOURCE,
        "targets": _targets(targets), "gridPos": {"w": width, "h": 4},
        "fieldConfig": {"defaults": {
            "unit": unit, "min": 0, "color": {"mode": "thresholds"}, "mappings": [],
            "thresholds": steps or _steps(),
        }, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value", "graphMode": "area", "justifyMode": "auto",
            "orientation": "auto", "textMode": "auto", "wideLayout": True,
            "showPercentChange": False,
        },
    }


def series(title: str, description: str, targets: Sequence[Target], unit: str = "short",
           steps: dict[str, Any] | None = None, width: int = 8, window: bool = True,
           overrides: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """A time series; ``window`` gauges change once per window, so they draw as steps."""
    custom = {
        "drawStyle": "line", "lineInterpolation": "stepAfter" if window else "linear",
        "lineWidth": 1, "fillOpacity": 10, "showPoints": "never", "spanNulls": False,
        "axisSoftMin": 0, "thresholdsStyle": {"mode": "dashed" if steps else "off"},
    }
    return {
        "type": "timeseries", "title": title, "description": description,
        "datasource": DATASOURCE, "targets": _targets(targets),
        "gridPos": {"w": width, "h": 8},
        "fieldConfig": {"defaults": {
            "unit": unit, "custom": custom, "color": {"mode": "palette-classic"},
            "mappings": [], "thresholds": steps or _steps(),
        }, "overrides": list(overrides)},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True,
                       "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def _filters_note(targets: Sequence[HistoryTarget]) -> str:
    """What the board's filters do to a panel: a filter applies where every input of a
    target carries its label (a ratio filtered on one side only would be wrong)."""
    kinds = {target.filters for target in targets}
    if len(kinds) != 1:
        raise ValueError(f"targets take different filters: {kinds}")
    (applied,) = kinds
    not_applied = [label for label in FILTERS if label not in applied]
    if not not_applied:
        return " The platform and channel filters apply."
    if not applied:
        return " All platforms and channels (not every input carries them; the filters do " \
            "not apply)."
    return (f" The {applied[0]} filter applies; the {not_applied[0]} filter does not (not "
            "every input carries it).")


def history(title: str, description: str, targets: Sequence[HistoryTarget],
            unit: str = "short", **options: Any) -> dict[str, Any]:
    """A time series over the event-time history."""
    return series(title, description + HISTORY_NOTE + _filters_note(targets),
                  [(target.expr, target.legend) for target in targets], unit, **options)


def _right_axis(ref_id: str, unit: str) -> dict[str, Any]:
    return {"matcher": {"id": "byFrameRefID", "options": ref_id}, "properties": [
        {"id": "custom.axisPlacement", "value": "right"}, {"id": "unit", "value": unit}]}


DAY_NOTE = (" Day gauge (live): the last closed event-time day (a rollup of its minute"
            " windows), all platforms and channels.")
FINAL_DAY = 'resolution="day", horizon="24h"'
COHORT_NOTE = " Cohorts are not in the event-time history: live gauges."


def product(t: Mapping[str, float]) -> list[dict[str, Any]]:
    """What a product team reads first: people and cohorts over days."""
    return [
        stat("Daily active senders", "Distinct senders of the last closed day (DAU, a CPC "
             "sketch of the day's senders, not a sum of minutes)." + DAY_NOTE,
             [("messaging:daily_active_senders:count", "DAU")]),
        stat("Weekly active senders", "Distinct senders of the 7 days ending with the last "
             "closed day (WAU)." + DAY_NOTE,
             [("messaging:weekly_active_senders:count", "WAU")]),
        stat("28-day active senders", "Distinct senders of the 28 days ending with the last "
             "closed day (MAU)." + DAY_NOTE,
             [("messaging:monthly_active_senders:count", "MAU")]),
        stat("Stickiness (DAU / MAU)", "Of the last 28 days' senders, the share who sent on "
             "the last closed day." + DAY_NOTE,
             [("messaging:stickiness:ratio", "DAU / MAU")], "percentunit"),
        stat("30-day InMail response rate (recruiters)",
             "Recruiters' InMails of the last final day (its InMail horizon has passed) "
             "that were accepted, declined or answered; orange under LinkedIn's policy "
             "threshold (13 %)." + COHORT_NOTE,
             [('messaging:final_inmail_response_rate:ratio{sender_type="recruiter"}',
               "recruiters")], "percentunit",
             _steps(below=t["inmail_response_policy_min"])),
        stat("Spam reports per 1k messages, by day",
             "Spam reports per 1,000 messages sent on the last closed day." + DAY_NOTE,
             [("messaging:daily_spam_reports:per_1k_messages", "per 1k")]),
        history("Messages and conversations per day",
                "Messages sent and conversations started: per closed event-time day (each "
                "day's total, held until the next day closes), and over the 24 hours up to "
                "each instant (the minute windows that ended in them, added up: exact at "
                "any moment, where a day's total is only known at the day's end).",
                [history_target("messaging:daily_messages_sent:count", "messages, day"),
                 last_day("sum(messaging_messages_sent)", "messages, last 24 h"),
                 history_target("messaging:daily_conversations_started:count",
                                "conversations, day"),
                 last_day("sum(messaging_conversations_started)", "conversations, last 24 h")]),
        series("24-hour response rate of a day's conversations",
               "Of the conversations started on a day, the share with a first reply within "
               "24 hours, per channel: final (never changes) once the day plus 24 hours "
               "has passed. At most 100 % by construction." + COHORT_NOTE,
               [(f"messaging:final_cohort_response_rate:ratio{{{FINAL_DAY}}}",
                 "{{channel}}")], "percentunit"),
        series("Time to first reply of a day's conversations (p50, p90)",
               "First-reply latency of a day's conversations answered within 24 hours, "
               "final cohorts, per channel." + COHORT_NOTE,
               [(f"messaging:final_cohort_first_reply_latency_p50:seconds{{{FINAL_DAY}}}",
                 "p50 {{channel}}"),
                (f"messaging:final_cohort_first_reply_latency_p90:seconds{{{FINAL_DAY}}}",
                 "p90 {{channel}}")], "s"),
        series("InMail response rate by sender type",
               "InMails of a day accepted, declined or answered within the InMail horizon "
               "(30 days): final days, and the newest ended day so far (provisional)."
               + COHORT_NOTE,
               [("messaging:final_inmail_response_rate:ratio", "final {{sender_type}}"),
                ("messaging:provisional_inmail_response_rate:ratio",
                 "provisional {{sender_type}}")], "percentunit"),
        history("Blocks per 1k active senders, by day",
                "Members blocked on a closed event-time day per 1,000 of its active senders, "
                "held until the next day closes.",
                [history_target("messaging:daily_blocks:per_1k_active_senders", "per 1k")]),
    ]


def _last_day_stat(title: str, what: str, target: HistoryTarget) -> dict[str, Any]:
    """The one stat on the history: a day's total at any moment is a sum of its windows,
    which the live gauges cannot give (they hold one window, or the last closed day)."""
    return stat(title, f"{what} in the minute windows that ended in the last 24 hours "
                "(event time), added up from the event-time history: exact at any moment, "
                "not only at a day's end." + _filters_note([target]),
                [(target.expr, target.legend)], width=3)


def overview(t: Mapping[str, float]) -> list[dict[str, Any]]:
    return [
        stat("Messages sent", "Messages sent (every message_sent) in the last closed window."
             + LIVE_NOTE, [(f"sum({SENT})", "messages")], width=3),
        _last_day_stat("Messages sent, last 24 h", "Messages sent",
                       last_day("sum(messaging_messages_sent)", "messages")),
        stat("Conversations started", "First messages of conversations in the last closed "
             "window." + LIVE_NOTE, [(f"sum({STARTED})", "conversations")], width=3),
        _last_day_stat("Conversations started, last 24 h", "Conversations started",
                       last_day("sum(messaging_conversations_started)", "conversations")),
        stat("Reply rate", "First replies per conversation started." + ALL_TRAFFIC + LIVE_NOTE,
             [("messaging:reply_rate:ratio", "reply rate")], "percentunit", width=3),
        stat("p95 first-reply latency",
             "95th-percentile first-reply latency (its alert compares it with the day "
             "before)." + ALL_TRAFFIC + LIVE_NOTE,
             [("messaging:first_reply_latency_p95:seconds", "p95")], "s", width=3),
        stat("Active senders", "Distinct senders (CPC sketch estimate) in the last closed "
             "window." + LIVE_NOTE, [("sum(messaging_active_senders)", "senders")], width=3),
        stat("Spam reports per 1k messages",
             "Spam reports per 1,000 messages sent; orange/red at the warning/critical "
             "alert thresholds." + ALL_TRAFFIC + LIVE_NOTE,
             [("messaging:spam_reports:per_1k_messages", "per 1k")], "short",
             _steps([t["spam_reports_per_1k_warning"], t["spam_reports_per_1k_critical"]]),
             width=3),
    ]


def core(t: Mapping[str, float]) -> list[dict[str, Any]]:
    return [
        history("Messages sent by channel", "Messages sent per channel.",
                [history_target("sum by (channel) (messaging_messages_sent)", "{{channel}}")]),
        history("Messages sent by platform", "Messages sent per platform.",
                [history_target("sum by (platform) (messaging_messages_sent)", "{{platform}}")]),
        history("Messages sent by sender type",
                "Messages sent per sender type (member, premium, recruiter, advertiser).",
                [history_target("sum by (sender_type) (messaging_messages_sent)", "{{sender_type}}")]),
        history("Conversations started by entry point",
                "Where conversations start: inbox, profile, job listing, search.",
                [history_target("sum by (entry_point) (messaging_conversations_started)", "{{entry_point}}")]),
        history("Reply rate by channel",
                "First replies per conversation started, per channel and over the selected "
                "channels; replies count in the reply's window, so a window can exceed 100 %.",
                [history_target("messaging:reply_rate_by_channel:ratio", "{{channel}}"),
                 history_target("messaging:reply_rate:ratio", "selected channels")],
                "percentunit"),
        history("First-reply latency p50 / p95 by channel",
                "First-reply latency quantiles per channel (linear interpolation in fixed "
                "buckets); a window without first replies has no point. The p95 alert "
                "compares the all-channel p95 with the day before: no line to draw.",
                [history_target("messaging:first_reply_latency_p50_by_channel:seconds",
                                "p50 {{channel}}"),
                 history_target("messaging:first_reply_latency_p95_by_channel:seconds",
                                "p95 {{channel}}")], "s"),
    ]


def supporting(t: Mapping[str, float]) -> list[dict[str, Any]]:
    return [
        history("InMail response rate",
                "First replies per InMail conversation started (its alert compares the live "
                "rule with the day before).",
                [history_target("messaging:inmail_response_rate:ratio", "InMail")],
                "percentunit"),
        history("Sponsored response rate",
                "First replies per sponsored conversation started.",
                [history_target("messaging:sponsored_response_rate:ratio", "sponsored")],
                "percentunit"),
        history("Attachment and rich-media share",
                "Share of messages sent with an attachment or rich media.",
                [history_target("messaging:attachment_share:ratio", "attachment"),
                 history_target("messaging:rich_media_share:ratio", "rich media")],
                "percentunit"),
        history("Mobile share", "Share of messages sent from iOS and Android.",
                [history_target("messaging:mobile_share:ratio", "mobile")], "percentunit"),
        history("Messages per active sender",
                "Messages sent per distinct sender: depth of messaging.",
                [history_target("messaging:messages_sent:per_active_sender",
                                "messages per sender")]),
        history("Reads by platform", "Read receipts per platform.",
                [history_target("sum by (platform) (messaging_messages_read)",
                                "{{platform}}")]),
        history("Recruiter InMail and advertiser sponsored sends",
                "InMails sent by recruiters and sponsored messages sent by advertisers "
                "(0 is a real value).",
                [history_target("messaging:recruiter_inmail_sent:messages", "recruiter InMail"),
                 history_target("messaging:advertiser_sponsored_sent:messages",
                                "advertiser sponsored")], width=24),
    ]


def risk(t: Mapping[str, float]) -> list[dict[str, Any]]:
    return [
        history("Spam reports per 1k messages by channel",
                "Spam reports per 1,000 messages sent, by the reported conversation's channel "
                "and over the selected channels; dashed lines at the warning and critical "
                "alert thresholds (the alerts average the live rule over 5 minutes).",
                [history_target("messaging:spam_reports_by_channel:per_1k_messages",
                                "{{channel}}"),
                 history_target("messaging:spam_reports:per_1k_messages",
                                "selected channels")], "short",
                steps=_steps([t["spam_reports_per_1k_warning"],
                              t["spam_reports_per_1k_critical"]]), width=12),
        history("Spam reports by reason",
                "Spam reports per reason (channel 'unknown': a conversation the worker never "
                "saw).",
                [history_target("sum by (reason) (messaging_spam_reports)",
                                "{{reason}}")], width=12),
        history("Blocks by platform", "Members blocked, by the platform of the block.",
                [history_target("sum by (platform) (messaging_blocks)",
                                "{{platform}}")], width=12),
        series("Flagged senders by reason",
               "Senders over a risk rule (velocity, spam reports, InMail response). The risk "
               "stage's, not in the event-time history." + LIVE_NOTE,
               [("sum by (reason) (messaging_flagged_senders)", "{{reason}}")], width=12),
    ]


def pipeline(t: Mapping[str, float]) -> list[dict[str, Any]]:
    return [
        series("Events processed by type", "Valid events counted into windows, per second.",
               [("sum by (type) (rate(messaging_events_processed_total[$__rate_interval]))",
                 "{{type}}")], "eps", window=False),
        series("Invalid events by reason", "Input rejected to the DLQ, per second, by reason.",
               [("sum by (reason) (rate(messaging_invalid_events_total[$__rate_interval]))",
                 "{{reason}}")], "eps", window=False),
        series("Late events",
               "Ingest: events after their window closed, per second (left axis). Aggregate: "
               "partials that reached a closed window, running total (right axis).",
               [("sum(rate(messaging_late_events_total[$__rate_interval]))", "ingest late/s"),
                ("sum(messaging_aggregate_late_events)", "aggregate late (total)")],
               "eps", window=False, overrides=[_right_axis("B", "short")]),
        series("Consumer lag",
               "Events not yet processed, all workers and per worker; dashed line at the "
               "alert threshold.",
               [("sum(messaging_consumer_lag_messages)", "total"),
                ("sum by (instance) (messaging_consumer_lag_messages)", "{{instance}}")],
               "short", _steps([t["consumer_lag_high_messages"]]), width=12, window=False),
        series("Ingest batch duration p95",
               "95th percentile of the wall time to process and commit one ingest batch.",
               [(BATCH_P95, "p95")], "s", width=12, window=False),
        series("Window end lag",
               "Wall clock minus the event-time end of the last closed window. Only "
               "meaningful for live traffic: a producer that compresses event time "
               "(PRODUCER_SPEED) or replays old events moves it; see the raw window end.",
               [("time() - max(messaging_window_end_timestamp_seconds)", "lag")], "s",
               width=12, window=False),
        stat("Last closed window end (event time)",
             "Event-time end of the most recently closed window, as a date.",
             [("max(messaging_window_end_timestamp_seconds) * 1000", "window end")],
             "dateTimeAsIso") | {"gridPos": {"w": 12, "h": 8}},
        series("Event-time history: delay and backlog",
               "The history stage: wall clock minus the event time up to which every closed "
               "window is in Prometheus' history (left axis; as the window end lag, only "
               "meaningful for live traffic), and windows read but not yet written (right "
               "axis: waiting for an owner, or for Prometheus).",
               [("time() - max(messaging_history_written_through_timestamp_seconds > 0)",
                 "written-through lag"),
                ("sum(messaging_history_pending_windows)", "pending windows")],
               "s", width=12, window=False, overrides=[_right_axis("B", "short")]),
        series("Event-time history: writes",
               "Windows written to Prometheus per second, by resolution (a rewrite after a "
               "restart counts again); writes retried (Prometheus down, slow, 5xx) and "
               "windows refused for good (older than its out-of-order window), per second.",
               [(HISTORY_WRITES, "{{resolution}}"),
                ("sum(rate(messaging_history_write_failures_total[$__rate_interval]))",
                 "retried writes"),
                ("sum(rate(messaging_history_windows_rejected_total[$__rate_interval]))",
                 "refused windows")],
               "ops", width=12, window=False),
    ]


ROWS = (("Product (daily)", product), ("Overview", overview), ("Core metrics", core),
        ("Supporting indicators", supporting), ("Risk factors", risk),
        ("Pipeline health", pipeline))


def _layout(rows: Sequence[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Rows full width, their panels flowed left to right; ids in reading order."""
    panels: list[dict[str, Any]] = []
    y = 0
    for title, members in rows:
        panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        y, x, line_height = y + 1, 0, 0
        for panel in members:
            w, h = panel["gridPos"]["w"], panel["gridPos"]["h"]
            if x + w > 24:
                y, x, line_height = y + line_height, 0, 0
            panel["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
            x, line_height = x + w, max(line_height, h)
            panels.append(panel)
        y += line_height
    for number, panel in enumerate(panels, start=1):
        panel["id"] = number
    return panels


def _variable(name: str, label: str) -> dict[str, Any]:
    definition = f"label_values(messaging_messages_sent,{name})"
    return {
        "type": "query", "name": name, "label": label, "datasource": DATASOURCE,
        "definition": definition,
        "query": {"qryType": 1, "query": definition,
                  "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [], "sort": 1, "regex": "", "hide": 0,
    }


def build_dashboard(thresholds: Mapping[str, float] | None = None) -> dict[str, Any]:
    t = load_thresholds() if thresholds is None else dict(thresholds)
    return {
        "uid": UID, "title": "Messaging metrics", "schemaVersion": SCHEMA_VERSION,
        "version": 1, "editable": False, "graphTooltip": 1, "timezone": "utc",
        "tags": ["messaging", "kafka", "faust"],
        "description": "Core metrics, supporting indicators, risk factors and pipeline "
        "health of messaging (docs/metrics.md). Graphs read the event-time history (every "
        "window, summed over all workers, at its end); stats read the live gauges (each "
        "worker's most recently closed window), as the alerts do.",
        "time": {"from": "now-1h", "to": "now"}, "refresh": "10s",
        "timepicker": {}, "fiscalYearStartMonth": 0, "liveNow": False, "links": [],
        "annotations": {"list": [
            {"builtIn": 1, "name": "Annotations & Alerts", "type": "dashboard",
             "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
             "hide": True, "iconColor": "rgba(0, 211, 255, 1)"},
            {"name": "Firing alerts", "datasource": DATASOURCE, "enable": True,
             "iconColor": "red", "expr": 'ALERTS{alertstate="firing"}', "step": "60s",
             "titleFormat": "{{alertname}}", "textFormat": "{{severity}}",
             "tagKeys": "alertname,severity", "useValueForTime": False},
        ]},
        "templating": {"list": [_variable("platform", "Platform"),
                                _variable("channel", "Channel")]},
        "panels": _layout([(title, make(t)) for title, make in ROWS]),
    }


# --- queries, for tests -----------------------------------------------------------------
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that is not a row, including those inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def substitute(expr: str, values: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise KeyError(f"no value for ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def panel_queries(
    dashboard: Mapping[str, Any], variables: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, variables substituted.

    Dashboard variables default to their ``allValue``, Grafana's built-ins to
    :data:`BUILTIN_VARIABLES`; ``variables`` overrides both. An unknown ``$name`` raises.
    """
    values = dict(BUILTIN_VARIABLES)
    for variable in dashboard.get("templating", {}).get("list", []):
        values[variable["name"]] = variable.get("allValue") or ".*"
    values.update(variables or {})
    return [
        (panel["title"], substitute(target["expr"], values))
        for panel in iter_panels(dashboard)
        for target in panel.get("targets", [])
    ]


def render(dashboard: Mapping[str, Any]) -> str:
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write (or --check) the Grafana board JSON.")
    parser.add_argument("--output", type=Path, default=DASHBOARD_PATH)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the file differs from the generated board")
    args = parser.parse_args(argv)
    text = render(build_dashboard())
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run python -m deploy.grafana_board",
                  file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
