"""The provisioned Grafana board, generated from compact panel definitions.

``python -m deploy.grafana_board`` writes ``grafana/dashboards/messaging-metrics.json``
(``--check`` only compares); a unit test holds the committed file equal to
:func:`build_dashboard`. :func:`panel_queries` gives every panel's PromQL with the
template variables filled in, so a test can evaluate each against a live Prometheus.

Thresholds are drawn at the absolute alert thresholds of ``prometheus/thresholds.yml``,
the one place they live (read through :mod:`deploy.prometheus_rules`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

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
WINDOW_NOTE = " Window gauge: the value of the most recently closed event-time window."
BATCH_P95 = ("histogram_quantile(0.95, sum by (le) "
             "(rate(messaging_ingest_batch_duration_seconds_bucket[$__rate_interval])))")
ALL_TRAFFIC = " All platforms and channels (recording rule; the filters do not apply)."

Target = tuple[str, str]  # (expr, legend)


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
         steps: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "stat", "title": title, "description": description, "datasource": DATASOURCE,
        "targets": _targets(targets), "gridPos": {"w": 4, "h": 4},
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


def _right_axis(ref_id: str, unit: str) -> dict[str, Any]:
    return {"matcher": {"id": "byFrameRefID", "options": ref_id}, "properties": [
        {"id": "custom.axisPlacement", "value": "right"}, {"id": "unit", "value": unit}]}


DAY_NOTE = (" Day gauge: the last closed event-time day (a rollup of its minute windows),"
            " all platforms and channels.")
FINAL_DAY = 'resolution="day", horizon="24h"'


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
             "threshold (13 %).",
             [('messaging:final_inmail_response_rate:ratio{sender_type="recruiter"}',
               "recruiters")], "percentunit",
             _steps(below=t["inmail_response_policy_min"])),
        stat("Spam reports per 1k messages, by day",
             "Spam reports per 1,000 messages sent on the last closed day." + DAY_NOTE,
             [("messaging:daily_spam_reports:per_1k_messages", "per 1k")]),
        series("Messages and conversations per day",
               "Messages sent and conversations started, by closed event-time day." + DAY_NOTE,
               [("messaging:daily_messages_sent:count", "messages"),
                ("messaging:daily_conversations_started:count", "conversations")]),
        series("24-hour response rate of a day's conversations",
               "Of the conversations started on a day, the share with a first reply within "
               "24 hours, per channel: final (never changes) once the day plus 24 hours "
               "has passed. At most 100 % by construction.",
               [(f"messaging:final_cohort_response_rate:ratio{{{FINAL_DAY}}}",
                 "{{channel}}")], "percentunit"),
        series("Time to first reply of a day's conversations (p50, p90)",
               "First-reply latency of a day's conversations answered within 24 hours, "
               "final cohorts, per channel.",
               [(f"messaging:final_cohort_first_reply_latency_p50:seconds{{{FINAL_DAY}}}",
                 "p50 {{channel}}"),
                (f"messaging:final_cohort_first_reply_latency_p90:seconds{{{FINAL_DAY}}}",
                 "p90 {{channel}}")], "s"),
        series("InMail response rate by sender type",
               "InMails of a day accepted, declined or answered within the InMail horizon "
               "(30 days): final days, and the newest ended day so far (provisional).",
               [("messaging:final_inmail_response_rate:ratio", "final {{sender_type}}"),
                ("messaging:provisional_inmail_response_rate:ratio",
                 "provisional {{sender_type}}")], "percentunit"),
        series("Blocks per 1k active senders, by day",
               "Members blocked on the last closed day per 1,000 of its active senders."
               + DAY_NOTE, [("messaging:daily_blocks:per_1k_active_senders", "per 1k")]),
    ]


def overview(t: Mapping[str, float]) -> list[dict[str, Any]]:
    return [
        stat("Messages sent", "Messages sent (every message_sent)." + WINDOW_NOTE,
             [(f"sum({SENT})", "messages")]),
        stat("Conversations started", "First messages of conversations." + WINDOW_NOTE,
             [(f"sum({STARTED})", "conversations")]),
        stat("Reply rate", "First replies per conversation started." + ALL_TRAFFIC,
             [("messaging:reply_rate:ratio", "reply rate")], "percentunit"),
        stat("p95 first-reply latency",
             "95th-percentile first-reply latency (its alert compares it with the day "
             "before)." + ALL_TRAFFIC,
             [("messaging:first_reply_latency_p95:seconds", "p95")], "s"),
        stat("Active senders", "Distinct senders (CPC sketch estimate)." + WINDOW_NOTE,
             [("sum(messaging_active_senders)", "senders")]),
        stat("Spam reports per 1k messages",
             "Spam reports per 1,000 messages sent; orange/red at the warning/critical "
             "alert thresholds." + ALL_TRAFFIC,
             [("messaging:spam_reports:per_1k_messages", "per 1k")], "short",
             _steps([t["spam_reports_per_1k_warning"], t["spam_reports_per_1k_critical"]])),
    ]


def core(t: Mapping[str, float]) -> list[dict[str, Any]]:
    return [
        series("Messages sent by channel", "Messages sent per channel." + WINDOW_NOTE,
               [(f"sum by (channel) ({SENT})", "{{channel}}")]),
        series("Messages sent by platform", "Messages sent per platform." + WINDOW_NOTE,
               [(f"sum by (platform) ({SENT})", "{{platform}}")]),
        series("Messages sent by sender type",
               "Messages sent per sender type (member, premium, recruiter, advertiser)."
               + WINDOW_NOTE, [(f"sum by (sender_type) ({SENT})", "{{sender_type}}")]),
        series("Conversations started by entry point",
               "Where conversations start: inbox, profile, job listing, search." + WINDOW_NOTE,
               [(f"sum by (entry_point) ({STARTED})", "{{entry_point}}")]),
        series("Reply rate by channel",
               "First replies per conversation started, per channel and overall; replies "
               "count in the reply's window, so a window can exceed 100 %.",
               [(f"messaging:reply_rate_by_channel:ratio{{{CHANNEL}}}", "{{channel}}"),
                ("messaging:reply_rate:ratio", "all channels")], "percentunit"),
        series("First-reply latency p50 / p95 by channel",
               "First-reply latency quantiles per channel (linear interpolation in fixed "
               "buckets); the dashed line is the p95 alert threshold.",
               [(f"messaging:first_reply_latency_p50_by_channel:seconds{{{CHANNEL}}}",
                 "p50 {{channel}}"),
                (f"messaging:first_reply_latency_p95_by_channel:seconds{{{CHANNEL}}}",
                 "p95 {{channel}}")], "s"),
    ]


def supporting(t: Mapping[str, float]) -> list[dict[str, Any]]:
    return [
        series("InMail response rate",
               "First replies per InMail conversation started (its alert compares it "
               "with the day before).", [("messaging:inmail_response_rate:ratio", "InMail")],
               "percentunit"),
        series("Sponsored response rate",
               "First replies per sponsored conversation started.",
               [("messaging:sponsored_response_rate:ratio", "sponsored")], "percentunit"),
        series("Attachment and rich-media share",
               "Share of messages sent with an attachment or rich media." + ALL_TRAFFIC,
               [("messaging:attachment_share:ratio", "attachment"),
                ("messaging:rich_media_share:ratio", "rich media")], "percentunit"),
        series("Mobile share", "Share of messages sent from iOS and Android." + ALL_TRAFFIC,
               [("messaging:mobile_share:ratio", "mobile")], "percentunit"),
        series("Messages per active sender",
               "Messages sent per distinct sender: depth of messaging." + ALL_TRAFFIC,
               [("messaging:messages_sent:per_active_sender", "messages per sender")]),
        series("Reads by platform", "Read receipts per platform." + WINDOW_NOTE,
               [(f'sum by (platform) (messaging_messages_read{{{PLATFORM}}})', "{{platform}}")]),
        series("Recruiter InMail and advertiser sponsored sends",
               "InMails sent by recruiters and sponsored messages sent by advertisers "
               "(0 is a real value)." + WINDOW_NOTE,
               [("messaging:recruiter_inmail_sent:messages", "recruiter InMail"),
                ("messaging:advertiser_sponsored_sent:messages", "advertiser sponsored")],
               width=24),
    ]


def risk(t: Mapping[str, float]) -> list[dict[str, Any]]:
    return [
        series("Spam reports per 1k messages by channel",
               "Spam reports per 1,000 messages sent, by the reported conversation's channel "
               "and overall; dashed lines at the warning and critical alert thresholds.",
               [(f"messaging:spam_reports_by_channel:per_1k_messages{{{CHANNEL}}}",
                 "{{channel}}"),
                ("messaging:spam_reports:per_1k_messages", "all channels")], "short",
               _steps([t["spam_reports_per_1k_warning"], t["spam_reports_per_1k_critical"]]),
               width=12),
        series("Spam reports by reason",
               "Spam reports per reason (channel 'unknown': a conversation the worker never "
               "saw)." + WINDOW_NOTE,
               [(f"sum by (reason) (messaging_spam_reports{{{CHANNEL}}})", "{{reason}}")],
               width=12),
        series("Blocks by platform", "Members blocked, by the platform of the block."
               + WINDOW_NOTE,
               [(f"sum by (platform) (messaging_blocks{{{PLATFORM}}})", "{{platform}}")],
               width=12),
        series("Flagged senders by reason",
               "Senders over a risk rule (velocity, spam reports, InMail response)."
               + WINDOW_NOTE,
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
        "health of messaging (docs/metrics.md). Window gauges hold the most recently "
        "closed event-time window.",
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
