"""Prometheus alert rules, Prometheus and Alertmanager configs, rendered from one source.

The alert definitions live in :data:`ALERTS` (PromQL with ``$threshold``, ``$range`` and
``$offset`` placeholders, ``for:`` durations, annotations); their thresholds live in
``prometheus/thresholds.yml``. ``python -m deploy.prometheus_rules`` writes the
production renders to ``prometheus/alert_rules.yml``, ``prometheus/prometheus.yml`` and
``prometheus/alertmanager.yml`` (``--check`` only compares); unit tests hold the
committed files equal to the renders, so they cannot drift.

Compressed-time tests and demos render their own copy::

    render_alert_rules(baseline_offset="24m", for_scale=0.05, range_scale=0.05)

``for_scale`` multiplies every ``for:``, ``range_scale`` every range selector (``[5m]``)
and ``baseline_offset`` replaces the ``offset 1d`` of the same-time-yesterday
comparisons (reply rate, InMail response rate, p95 first-reply latency). At
``PRODUCER_SPEED=60`` a wall minute is an event hour, so ``24m`` is "a day earlier".
The pipeline's own health rules (``wall_clock``: a stall, a worker or Kafka gone, lag)
watch processes, which pause in wall seconds however fast event time runs; ``wall_scale``
(default 1) scales their ``for:`` and ranges instead.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "prometheus"
THRESHOLDS_PATH = PROMETHEUS_DIR / "thresholds.yml"
ALERT_RULES_PATH = PROMETHEUS_DIR / "alert_rules.yml"
PROMETHEUS_CONFIG_PATH = PROMETHEUS_DIR / "prometheus.yml"
ALERTMANAGER_CONFIG_PATH = PROMETHEUS_DIR / "alertmanager.yml"

RUNBOOK_BASE = "https://github.com/messaging-metrics/messaging-metrics/blob/main/docs/runbooks.md"
WORKER_JOB = "messaging-worker"
SEVERITIES = ("warning", "critical")

# what the committed files are rendered with
PRODUCTION_WORKER_DNS_NAMES = ("worker",)  # docker-compose's service: every replica, :6066
PRODUCTION_ALERTMANAGER = "alertmanager:9093"
PRODUCTION_RULE_FILES = ("recording_rules.yml", "alert_rules.yml")
PLACEHOLDER_WEBHOOK_URL = "http://127.0.0.1:9095/alerts"

_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_UNITS = (("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1))


def parse_duration(text: str) -> int:
    """Seconds in a Prometheus duration of whole units (``1d``, ``1h30m``, ``45s``)."""
    match = _DURATION.match(text)
    if not text or match is None:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * size for n, (_, size) in zip(match.groups(), _UNITS) if n)


def format_duration(seconds: int) -> str:
    """``5400`` -> ``1h30m``; ``0`` -> ``0s``."""
    if seconds < 0:
        raise ValueError("durations are not negative")
    parts = []
    for unit, size in _UNITS[1:]:  # days and below: what people read in rule files
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def scale_duration(text: str, factor: float) -> str:
    """``text`` times ``factor``, rounded to whole seconds and at least one second."""
    if factor <= 0:
        raise ValueError("a scale factor must be > 0")
    if factor == 1:
        return format_duration(parse_duration(text))
    return format_duration(max(1, round(parse_duration(text) * factor)))


@dataclass(frozen=True)
class AlertSpec:
    """One alerting rule before rendering.

    ``expr`` is a :class:`string.Template`: ``$threshold`` (the value of ``threshold``
    in thresholds.yml), ``$range`` (``range``, scaled) and ``$offset`` (the baseline
    offset). In ``summary`` and ``description``, ``[threshold]``, ``[range]`` and
    ``[offset]`` are replaced the same way; ``{{ ... }}`` is Prometheus templating.

    ``wall_clock``: the rule judges the pipeline's processes, not the traffic's event
    time. A compressed render scales its durations by ``wall_scale``, not by the event
    time's ``for_scale`` and ``range_scale``: a process on a busy machine pauses for
    seconds of wall time whatever the producer's speed, and at 720x a 5m stall rule
    shrunk with event time fired on an 8 s pause that production would never see.
    """

    alert: str
    severity: str
    group: str
    expr: str
    for_: str
    summary: str
    description: str
    threshold: str | None = None
    range: str | None = None
    wall_clock: bool = False

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"{self.alert}: severity must be one of {SEVERITIES}")
        uses = {"threshold": "$threshold" in self.expr, "range": "$range" in self.expr}
        for field, used in uses.items():
            if used != (getattr(self, field) is not None):
                raise ValueError(f"{self.alert}: ${field} and the {field} field disagree")

    @property
    def runbook_url(self) -> str:
        return f"{RUNBOOK_BASE}#{self.alert.lower()}"


_RATIO_VS_YESTERDAY = """\
avg_over_time({metric}[$range])
  / (avg_over_time({metric}[$range] offset $offset) > 0)
{op} $threshold"""

_INVALID_SHARE = """\
sum(rate(messaging_invalid_events_total[$range]))
  / ((sum(rate(messaging_invalid_events_total[$range]))
      + sum(rate(messaging_events_processed_total[$range]))) > 0)
> $threshold"""


def _spam(severity: str) -> AlertSpec:
    return AlertSpec(
        alert="MessagingSpamReportsHigh",
        severity=severity,
        group="messaging-risk",
        expr="avg_over_time(messaging:spam_reports:per_1k_messages[$range]) > $threshold",
        for_="5m",
        range="5m",
        threshold=f"spam_reports_per_1k_{severity}",
        summary="Spam reports at {{ $value | humanize }} per 1,000 messages",
        description=(
            "Spam reports per 1,000 messages sent averaged {{ $value | humanize }} over the "
            f"last [range] (the {severity} threshold is [threshold]). A spam or scam wave, "
            "or a change to spam detection or the report UI."
        ),
    )


def _invalid(severity: str, for_: str) -> AlertSpec:
    return AlertSpec(
        alert="MessagingInvalidEventsHigh",
        severity=severity,
        group="messaging-pipeline",
        expr=_INVALID_SHARE,
        for_=for_,
        range="5m",
        threshold=f"invalid_event_share_{severity}",
        summary="{{ $value | humanizePercentage }} of input events are invalid",
        description=(
            "{{ $value | humanizePercentage }} of the events read over the last [range] were "
            f"rejected to the DLQ (the {severity} threshold is [threshold]); they are "
            "missing from every metric. Usually a producer deploy or schema change."
        ),
    )


ALERTS: tuple[AlertSpec, ...] = (
    # --- risk factors -------------------------------------------------------------------
    _spam("warning"),
    _spam("critical"),
    AlertSpec(
        alert="MessagingFlaggedSendersSurge",
        severity="warning",
        group="messaging-risk",
        expr=(
            "sum by (reason) (\n"
            '  avg_over_time(messaging_flagged_senders{reason=~"velocity|spam_reports"}[$range])\n'
            ") >= $threshold"
        ),
        for_="5m",
        range="10m",
        threshold="flagged_senders_high",
        summary="{{ $value | humanize }} senders flagged by the {{ $labels.reason }} rule",
        description=(
            "On average {{ $value | humanize }} senders per window were flagged by the "
            "{{ $labels.reason }} risk rule over the last [range] (threshold [threshold]): "
            "automation or a spam campaign. The senders and their evidence are on the "
            "messaging.risk.flagged-senders topic."
        ),
    ),
    AlertSpec(
        alert="MessagingBlocksSurge",
        severity="warning",
        group="messaging-risk",
        expr=(
            "1000 * sum(sum_over_time(messaging_blocks[$range]))\n"
            "  / (sum(sum_over_time(messaging_messages_sent[$range])) > 0)\n"
            "> $threshold"
        ),
        for_="10m",
        range="10m",
        threshold="blocks_per_1k_high",
        summary="Members blocked at {{ $value | humanize }} per 1,000 messages",
        description=(
            "{{ $value | humanize }} members were blocked per 1,000 messages sent over the "
            "last [range] (threshold [threshold]): harassment, unwanted outreach or a spam "
            "wave."
        ),
    ),
    # --- core metrics, against the same time a day earlier ------------------------------
    AlertSpec(
        alert="MessagingReplyRateDrop",
        severity="critical",
        group="messaging-core",
        expr=_RATIO_VS_YESTERDAY.format(metric="messaging:reply_rate:ratio", op="<"),
        for_="10m",
        range="30m",
        threshold="reply_rate_vs_baseline_min",
        summary="Reply rate at {{ $value | humanizePercentage }} of its level [offset] earlier",
        description=(
            "The reply rate (first replies per conversation started), averaged over the "
            "last [range], is {{ $value | humanizePercentage }} of its level [offset] "
            "earlier (alert below a ratio of [threshold]). Replies fail or members are not "
            "prompted to reply: message sending, notifications, a client release."
        ),
    ),
    AlertSpec(
        alert="MessagingInMailResponseRateLow",
        severity="warning",
        group="messaging-core",
        expr=_RATIO_VS_YESTERDAY.format(metric="messaging:inmail_response_rate:ratio", op="<"),
        for_="15m",
        range="1h",
        threshold="inmail_response_rate_vs_baseline_min",
        summary=(
            "InMail response rate at {{ $value | humanizePercentage }} of its level "
            "[offset] earlier"
        ),
        description=(
            "The InMail response rate, averaged over the last [range], is "
            "{{ $value | humanizePercentage }} of its level [offset] earlier (alert below a "
            "ratio of [threshold]). Recruiters' InMail gets fewer answers: InMail delivery "
            "or notifications, or a burst of poorly targeted InMail."
        ),
    ),
    AlertSpec(
        alert="MessagingInMailResponseBelowPolicy",
        severity="warning",
        group="messaging-product",
        expr=('messaging:final_inmail_response_rate:ratio{sender_type="recruiter"} '
              "< $threshold"),
        for_="10m",
        threshold="inmail_response_policy_min",
        summary=(
            "Recruiters' InMail response rate at {{ $value | humanizePercentage }}, "
            "below LinkedIn's policy"
        ),
        description=(
            "Of the InMails recruiters sent on the last day that is final (its InMail "
            "horizon has passed), {{ $value | humanizePercentage }} were accepted, declined "
            "or answered: below the policy threshold of [threshold] that LinkedIn applies "
            "to each recruiter. InMail is reaching the wrong people across the board "
            "(targeting, templates, a campaign), not one sender: see the flagged senders."
        ),
    ),
    AlertSpec(
        alert="MessagingFirstReplyLatencyHigh",
        severity="warning",
        group="messaging-core",
        expr=_RATIO_VS_YESTERDAY.format(
            metric="messaging:first_reply_latency_p95:seconds", op=">"),
        for_="15m",
        range="30m",
        threshold="first_reply_latency_p95_vs_baseline_max",
        summary="p95 first-reply latency at {{ $value | humanize }}x its level [offset] earlier",
        description=(
            "The 95th-percentile first-reply latency, averaged over the last [range], is "
            "{{ $value | humanize }} times its level [offset] earlier (alert above a ratio "
            "of [threshold]). Members see new messages late: notification delivery, inbox "
            "sync, a client release."
        ),
    ),
    # --- pipeline health ----------------------------------------------------------------
    AlertSpec(
        alert="MessagingPipelineStalled",
        severity="critical",
        group="messaging-pipeline",
        wall_clock=True,
        expr=(
            "messaging_window_end_timestamp_seconds\n"
            "  and changes(messaging_window_end_timestamp_seconds[$range]) == 0"
        ),
        for_="5m",
        range="5m",
        summary="No event-time window has closed on {{ $labels.instance }}",
        description=(
            "The last window {{ $labels.instance }} closed ended at "
            "{{ $value | humanizeTimestamp }} (event time) and no window has closed since, "
            "for at least [range]: every window gauge and dashboard is stale. Input "
            "stopped, or the watermark is stuck."
        ),
    ),
    AlertSpec(
        alert="MessagingHistoryStalled",
        severity="warning",
        group="messaging-pipeline",
        wall_clock=True,
        expr=(
            "messaging_history_pending_windows > 0\n"
            "  and changes(messaging_history_written_through_timestamp_seconds[$range]) == 0"
        ),
        for_="10m",
        range="10m",
        summary="The event-time history has stopped on {{ $labels.instance }}",
        description=(
            "{{ $value }} closed windows wait on {{ $labels.instance }} and none has been "
            "written to Prometheus' history for at least [range]: the event-time graphs and "
            "daily totals end there (the live gauges and alerts go on). Prometheus refuses "
            "the writes or cannot be reached, or an aggregate owner has stopped reporting."
        ),
    ),
    AlertSpec(
        alert="MessagingWorkerDown",
        severity="critical",
        group="messaging-pipeline",
        wall_clock=True,
        expr=f'up{{job="{WORKER_JOB}"}} == 0',
        for_="2m",
        summary="Messaging worker {{ $labels.instance }} is down",
        description=(
            "Prometheus cannot scrape {{ $labels.instance }} (job {{ $labels.job }}, up = "
            "{{ $value }}) and has not for [for]: the worker is down or unreachable, and the "
            "partitions it owns are not processed until another worker takes them over."
        ),
    ),
    AlertSpec(
        alert="MessagingKafkaUnreachable",
        severity="critical",
        group="messaging-pipeline",
        wall_clock=True,
        expr="max by (instance, stage) (messaging_kafka_outage_seconds) > 60",
        for_="1m",
        summary="The {{ $labels.stage }} stage on {{ $labels.instance }} has no Kafka",
        description=(
            "The {{ $labels.stage }} stage on {{ $labels.instance }} has been without "
            "Kafka for {{ $value | humanizeDuration }}: it holds the watermark (no window "
            "closes early, nothing is lost) and retries from its last commit, but no "
            "window closes until it has Kafka back. Brokers down, stalled or unreachable."
        ),
    ),
    _invalid("warning", "10m"),
    _invalid("critical", "5m"),
    AlertSpec(
        alert="MessagingConsumerLagHigh",
        severity="warning",
        group="messaging-pipeline",
        wall_clock=True,
        expr="sum(messaging_consumer_lag_messages) > $threshold",
        for_="10m",
        threshold="consumer_lag_high_messages",
        summary="Ingest is {{ $value | humanize }} messages behind",
        description=(
            "The workers' ingest is {{ $value | humanize }} messages behind the events topic "
            "(threshold [threshold]) and has been for [for]: input outpaces processing."
        ),
    ),
)


# --- thresholds ---------------------------------------------------------------------------
def load_threshold_file(path: Path = THRESHOLDS_PATH) -> dict[str, Any]:
    """The whole thresholds file: ``thresholds``, ``units`` and ``reasons`` mappings."""
    import yaml  # a dev dependency: only the generator and tests read the file

    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("thresholds"), dict):
        raise TypeError(f"{path}: expected a 'thresholds' mapping")
    return data


def load_thresholds(path: Path = THRESHOLDS_PATH) -> dict[str, float]:
    """Threshold name -> value."""
    values = load_threshold_file(path)["thresholds"]
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{path}: threshold {name} is not a number: {value!r}")
    return dict(values)


def format_number(value: float) -> str:
    """A threshold as it appears in PromQL and annotations (``0.65``, ``100000``)."""
    return format(value, "g") if isinstance(value, float) else str(value)


# --- alert rules --------------------------------------------------------------------------
def alert_rules(
    baseline_offset: str = "1d",
    for_scale: float = 1.0,
    *,
    range_scale: float = 1.0,
    wall_scale: float = 1.0,
    thresholds: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """The rendered rules as plain data, one dict per rule (in :data:`ALERTS` order)."""
    values = load_thresholds() if thresholds is None else dict(thresholds)
    offset = format_duration(parse_duration(baseline_offset))
    rules = []
    for spec in ALERTS:
        for_factor, range_factor = (
            (wall_scale, wall_scale) if spec.wall_clock else (for_scale, range_scale)
        )
        fills = {"offset": offset, "for": scale_duration(spec.for_, for_factor)}
        if spec.range is not None:
            fills["range"] = scale_duration(spec.range, range_factor)
        if spec.threshold is not None:
            if spec.threshold not in values:
                raise KeyError(f"{spec.alert}: no threshold {spec.threshold!r} in thresholds")
            fills["threshold"] = format_number(values[spec.threshold])
        expr = Template(spec.expr).substitute(fills)

        def text(template: str, fills: dict[str, str] = fills) -> str:
            for key, value in fills.items():
                template = template.replace(f"[{key}]", value)
            return template

        rules.append({
            "group": spec.group,
            "alert": spec.alert,
            "expr": expr,
            "for": fills["for"],
            "labels": {"severity": spec.severity},
            "annotations": {
                "summary": text(spec.summary),
                "description": text(spec.description),
                "runbook_url": spec.runbook_url,
            },
        })
    return rules


def _q(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(text, ensure_ascii=False)


def render_alert_rules(
    baseline_offset: str = "1d",
    for_scale: float = 1.0,
    *,
    range_scale: float = 1.0,
    wall_scale: float = 1.0,
    thresholds: Mapping[str, float] | None = None,
) -> str:
    """``prometheus/alert_rules.yml``: production with the defaults.

    ``for_scale`` multiplies every ``for:`` (0.05 turns 10m into 30s), ``range_scale``
    every range selector (0.05 turns [5m] into [15s]), and ``baseline_offset`` replaces
    the ``offset 1d`` of the same-time-yesterday comparisons (reply rate, InMail response
    rate, p95 first-reply latency). The pipeline-health rules (``wall_clock``) take
    ``wall_scale`` for both instead. Scaled durations are rounded to whole seconds, at
    least 1s. ``thresholds`` (name -> value) replaces thresholds.yml's values.
    """
    rules = alert_rules(
        baseline_offset, for_scale, range_scale=range_scale, wall_scale=wall_scale,
        thresholds=thresholds,
    )
    production = (baseline_offset, for_scale, range_scale, wall_scale, thresholds) == (
        "1d", 1.0, 1.0, 1.0, None)
    lines = [
        "# GENERATED by deploy/prometheus_rules.py from prometheus/thresholds.yml; do not edit.",
        "# Regenerate with: .venv/bin/python -m deploy.prometheus_rules",
        "# Runbooks (one per alert): docs/runbooks.md; promtool tests:",
        "# prometheus/tests/alert_rules_test.yml.",
        "# Inputs are the window gauges and the recording rules of recording_rules.yml.",
    ]
    if not production:
        lines.append(
            f"# Compressed-time render: baseline offset {baseline_offset}, for x{for_scale:g}, "
            f"ranges x{range_scale:g}, pipeline health x{wall_scale:g}"
            f"{', custom thresholds' if thresholds is not None else ''}."
        )
    lines.append("groups:")
    for group in dict.fromkeys(rule["group"] for rule in rules):
        lines += [f"  - name: {group}", "    rules:"]
        for rule in (r for r in rules if r["group"] == group):
            lines.append(f"      - alert: {rule['alert']}")
            lines.append("        expr: |")
            lines += [f"          {line}" for line in rule["expr"].splitlines()]
            lines.append(f"        for: {rule['for']}")
            lines.append("        labels:")
            lines += [f"          {k}: {v}" for k, v in rule["labels"].items()]
            lines.append("        annotations:")
            lines += [f"          {k}: {_q(v)}" for k, v in rule["annotations"].items()]
    return "\n".join(lines) + "\n"


# --- Prometheus and Alertmanager configs ----------------------------------------------------
# How old a window may be when the history stage writes it (see render_prometheus_config)
OUT_OF_ORDER_WINDOW = "7d"


def render_prometheus_config(
    worker_targets: Sequence[str],
    alertmanager: str,
    rule_files: Sequence[str],
    scrape_interval: str = "5s",
    *,
    evaluation_interval: str | None = None,
    worker_dns_names: Sequence[str] = (),
    worker_port: int = 6066,
    out_of_order_window: str = OUT_OF_ORDER_WINDOW,
) -> str:
    """A ``prometheus.yml`` scraping the workers (job ``messaging-worker``), loading the
    rule files (relative to the config file) and alerting ``alertmanager`` (host:port).

    The TSDB takes samples up to ``out_of_order_window`` older than its newest: the
    workers' history stage remote-writes each window at its event-time end, and a
    catch-up (a restart, an outage, a replay) writes windows that are hours old. (The
    remote-write receiver itself is a command-line flag:
    ``--web.enable-remote-write-receiver``.)

    Workers are ``worker_targets`` (host:port, static) and/or every address of the DNS
    names ``worker_dns_names`` (A records, on ``worker_port``): the committed file finds
    every replica of docker-compose's ``--scale worker=N`` by DNS, each scraped once.
    """
    if not worker_targets and not worker_dns_names:
        raise ValueError("at least one worker target or DNS name is needed")
    evaluation = evaluation_interval or scrape_interval
    for duration in (scrape_interval, evaluation, out_of_order_window):
        parse_duration(duration)
    lines = [
        "# Prometheus for messaging-metrics: scrapes the workers, evaluates the recording and",
        "# alert rules, sends alerts to Alertmanager. GENERATED by deploy/prometheus_rules.py",
        "# (render_prometheus_config); do not edit, regenerate: python -m deploy.prometheus_rules",
        "global:",
        f"  scrape_interval: {scrape_interval}",
        f"  evaluation_interval: {evaluation}",
        "",
        "storage:",
        "  tsdb:",
        f"    out_of_order_time_window: {out_of_order_window}",
        "",
        "rule_files:",
        *[f"  - {_q(path)}" for path in rule_files],
        "",
        "alerting:",
        "  alertmanagers:",
        "    - static_configs:",
        f"        - targets: [{_q(alertmanager)}]",
        "",
        "scrape_configs:",
        f"  - job_name: {WORKER_JOB}",
        f"    scrape_interval: {scrape_interval}",
    ]
    if worker_targets:
        lines += [
            "    static_configs:",
            f"      - targets: [{', '.join(_q(t) for t in worker_targets)}]",
        ]
    if worker_dns_names:
        lines += [
            "    # every replica: one A record per container of the service",
            "    dns_sd_configs:",
            f"      - names: [{', '.join(_q(n) for n in worker_dns_names)}]",
            "        type: A",
            f"        port: {worker_port}",
            "        refresh_interval: 10s",
        ]
    return "\n".join(lines) + "\n"


def render_alertmanager_config(
    webhook_url: str,
    *,
    group_wait: str = "30s",
    group_interval: str = "5m",
    repeat_interval: str = "4h",
) -> str:
    """An ``alertmanager.yml`` routing by severity to two webhook receivers at one URL.

    Both receivers (``messaging-critical`` and ``messaging-warning``) post to
    ``webhook_url``; the payload's ``receiver`` field tells them apart. Alerts are grouped
    by alertname, and a firing critical inhibits the warning of the same alertname.
    Alertmanager has no environment substitution, hence this renderer (tests pass a
    local receiver and short timings).
    """
    if not re.match(r"^https?://\S+$", webhook_url):
        raise ValueError(f"not an http(s) URL: {webhook_url!r}")
    for duration in (group_wait, group_interval, repeat_interval):
        parse_duration(duration)
    critical_wait = format_duration(max(1, parse_duration(group_wait) // 3))
    critical_repeat = format_duration(max(1, parse_duration(repeat_interval) // 4))
    url = _q(webhook_url)
    lines = [
        "# Alertmanager for messaging-metrics. GENERATED by deploy/prometheus_rules.py",
        "# (render_alertmanager_config); the webhook URL is a placeholder: render your own with",
        "# render_alertmanager_config(webhook_url=...) (Alertmanager does not expand env vars).",
        "route:",
        "  receiver: messaging-warning",
        "  group_by: [alertname]",
        f"  group_wait: {group_wait}",
        f"  group_interval: {group_interval}",
        f"  repeat_interval: {repeat_interval}",
        "  routes:",
        "    - receiver: messaging-critical",
        "      matchers: ['severity=\"critical\"']",
        f"      group_wait: {critical_wait}",
        f"      repeat_interval: {critical_repeat}",
        "    - receiver: messaging-warning",
        "      matchers: ['severity=\"warning\"']",
        "",
        "# A firing critical silences the warning of the same alert (e.g. spam reports).",
        "inhibit_rules:",
        "  - source_matchers: ['severity=\"critical\"']",
        "    target_matchers: ['severity=\"warning\"']",
        "    equal: [alertname]",
        "",
        "receivers:",
        "  - name: messaging-critical",
        "    webhook_configs:",
        f"      - url: {url}",
        "        send_resolved: true",
        "  - name: messaging-warning",
        "    webhook_configs:",
        f"      - url: {url}",
        "        send_resolved: true",
    ]
    return "\n".join(lines) + "\n"


def production_files() -> dict[Path, str]:
    """Every committed file this module renders, with its production content."""
    return {
        ALERT_RULES_PATH: render_alert_rules(),
        PROMETHEUS_CONFIG_PATH: render_prometheus_config(
            [], PRODUCTION_ALERTMANAGER, list(PRODUCTION_RULE_FILES),
            worker_dns_names=list(PRODUCTION_WORKER_DNS_NAMES),
        ),
        ALERTMANAGER_CONFIG_PATH: render_alertmanager_config(PLACEHOLDER_WEBHOOK_URL),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.prometheus_rules",
        description="Write the production alert rules and Prometheus/Alertmanager configs, "
        "or (with --output) one compressed-time render of the alert rules.",
    )
    parser.add_argument("--check", action="store_true",
                        help="only compare the committed files with the renders")
    parser.add_argument("--output", type=Path, default=None,
                        help="write one alert rules render here instead (for demos)")
    parser.add_argument("--baseline-offset", default="1d")
    parser.add_argument("--for-scale", type=float, default=1.0)
    parser.add_argument("--range-scale", type=float, default=1.0)
    parser.add_argument("--wall-scale", type=float, default=1.0,
                        help="scales the pipeline-health rules' for: and ranges")
    args = parser.parse_args(argv)
    if args.output is not None:
        args.output.write_text(render_alert_rules(
            args.baseline_offset, args.for_scale, range_scale=args.range_scale,
            wall_scale=args.wall_scale))
        print(f"wrote {args.output}")
        return 0
    stale = []
    for path, text in production_files().items():
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if args.check and stale:
        print("out of date: " + ", ".join(str(p.relative_to(ROOT)) for p in stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
