"""The demo's terminal view: the last closed day (the product row), the last closed
windows and pipeline health, from /metrics.

:func:`snapshot` turns one scrape into plain numbers (pure, unit-tested);
:class:`LiveView` keeps the recent windows and renders them with rich.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.table import Table

from streams.quantiles import histogram_quantile


@dataclass(frozen=True, slots=True)
class Day:
    """The last closed day and the newest final cohorts, as the board's first row."""

    end: float | None = None
    active: float = 0.0
    weekly: float = 0.0
    monthly: float = 0.0
    messages: float = 0.0
    conversations: float = 0.0
    spam_reports: float = 0.0
    cohort_conversations: float = 0.0  # the newest day final for 24 h
    cohort_replied: float = 0.0
    inmail_sent: float = 0.0  # recruiters', the newest final InMail day
    inmail_responses: float = 0.0
    # the newest ended day, so far: shown while no final exists yet
    provisional_conversations: float = 0.0
    provisional_replied: float = 0.0
    provisional_inmail_sent: float = 0.0
    provisional_inmail_responses: float = 0.0

    @property
    def stickiness(self) -> float:
        return self.active / self.monthly if self.monthly else math.nan

    @property
    def response_24h(self) -> tuple[float, bool]:
        """The newest final day's 24-hour response rate, else yesterday's so far; and
        whether it is final."""
        return _final_or_so_far(self.cohort_replied, self.cohort_conversations,
                                self.provisional_replied, self.provisional_conversations)

    @property
    def inmail_response(self) -> tuple[float, bool]:
        return _final_or_so_far(self.inmail_responses, self.inmail_sent,
                                self.provisional_inmail_responses, self.provisional_inmail_sent)


def _final_or_so_far(part: float, whole: float, part_so_far: float,
                     whole_so_far: float) -> tuple[float, bool]:
    if whole:
        return part / whole, True
    return (part_so_far / whole_so_far if whole_so_far else math.nan), False


_DAY_24H = {"resolution": "day", "horizon": "24h"}
_RECRUITER = {"sender_type": "recruiter"}
_DAY_FIELDS = {  # sample name, labels it must have -> Day field
    ("messaging_daily_window_end_timestamp_seconds", ()): "end",
    ("messaging_daily_active_senders", ()): "active",
    ("messaging_weekly_active_senders", ()): "weekly",
    ("messaging_monthly_active_senders", ()): "monthly",
    ("messaging_daily_messages_sent", ()): "messages",
    ("messaging_daily_conversations_started", ()): "conversations",
    ("messaging_daily_spam_reports", ()): "spam_reports",
    ("messaging_final_cohort_conversations", tuple(_DAY_24H.items())): "cohort_conversations",
    ("messaging_final_cohort_first_replies", tuple(_DAY_24H.items())): "cohort_replied",
    ("messaging_final_inmail_cohort_sent", tuple(_RECRUITER.items())): "inmail_sent",
    ("messaging_final_inmail_cohort_responses", tuple(_RECRUITER.items())): "inmail_responses",
    ("messaging_provisional_cohort_conversations", (("resolution", "day"),)):
        "provisional_conversations",
    ("messaging_provisional_cohort_first_replies", tuple(_DAY_24H.items())):
        "provisional_replied",
    ("messaging_provisional_inmail_cohort_sent", tuple(_RECRUITER.items())):
        "provisional_inmail_sent",
    ("messaging_provisional_inmail_cohort_responses", tuple(_RECRUITER.items())):
        "provisional_inmail_responses",
}
_BY_NAME = {name: (labels, attr) for (name, labels), attr in _DAY_FIELDS.items()}


@dataclass(frozen=True, slots=True)
class Snapshot:
    window_end: float | None
    messages: float
    conversations: float
    first_replies: float
    latency_p50: float
    latency_p95: float
    spam_reports: float
    processed_total: float
    invalid_total: float
    late_total: float
    lag: float
    day: Day = field(default_factory=Day)

    @property
    def reply_rate(self) -> float:
        return self.first_replies / self.conversations if self.conversations else math.nan

    @property
    def spam_per_1k(self) -> float:
        return 1000 * self.spam_reports / self.messages if self.messages else math.nan


def snapshot(metrics_text: str) -> Snapshot:
    sums: dict[str, float] = {}
    buckets: dict[float, float] = {}
    day: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            wanted = _BY_NAME.get(sample.name)
            if wanted is not None:
                labels, attr = wanted
                if all(sample.labels.get(k) == v for k, v in labels):
                    day[attr] = day.get(attr, 0.0) + sample.value
            if sample.name == "messaging_reply_latency_seconds_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
            else:
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    pairs = sorted(buckets.items())
    return Snapshot(
        window_end=sums.get("messaging_window_end_timestamp_seconds"),
        messages=sums.get("messaging_messages_sent", 0.0),
        conversations=sums.get("messaging_conversations_started", 0.0),
        first_replies=sums.get("messaging_first_replies", 0.0),
        latency_p50=histogram_quantile(0.5, pairs),
        latency_p95=histogram_quantile(0.95, pairs),
        spam_reports=sums.get("messaging_spam_reports", 0.0),
        processed_total=sums.get("messaging_events_processed_total", 0.0),
        invalid_total=sums.get("messaging_invalid_events_total", 0.0),
        late_total=sums.get("messaging_late_events_total", 0.0),
        lag=sums.get("messaging_consumer_lag_messages", 0.0),
        day=Day(**day),
    )


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _ratio(value: float, fmt: str) -> str:
    return "-" if math.isnan(value) else format(value, fmt)


def _rate(value: float, final: bool) -> str:
    return _ratio(value, ".1%") + ("" if final or math.isnan(value) else " so far")


@dataclass
class LiveView:
    keep: int = 12
    windows: deque[Snapshot] = field(default_factory=lambda: deque(maxlen=12))
    last: Snapshot | None = None
    rate: float = 0.0
    _last_at: float = 0.0
    alerts: list[str] = field(default_factory=list)
    status: str = ""

    def update(self, snap: Snapshot, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.last is not None and now > self._last_at:
            self.rate = (snap.processed_total - self.last.processed_total) / (now - self._last_at)
        self.last, self._last_at = snap, now
        if snap.window_end is not None and (
            not self.windows or self.windows[-1].window_end != snap.window_end
        ):
            self.windows.append(snap)

    def render(self) -> Group:
        daily = Table(title="Product (daily): the last closed event-time day", expand=True)
        for column in ("day end (UTC)", "DAU", "WAU", "MAU", "DAU / MAU", "messages",
                       "conversations", "24-h response", "InMail response", "spam / 1k msgs"):
            daily.add_column(column, justify="right")
        d = self.last.day if self.last is not None else Day()
        if d.end is not None:
            daily.add_row(
                datetime.fromtimestamp(d.end, tz=UTC).strftime("%Y-%m-%d %H:%M"),
                f"{d.active:,.0f}", f"{d.weekly:,.0f}", f"{d.monthly:,.0f}",
                _ratio(d.stickiness, ".1%"), f"{d.messages:,.0f}", f"{d.conversations:,.0f}",
                _rate(*d.response_24h), _rate(*d.inmail_response),
                _ratio(1000 * d.spam_reports / d.messages if d.messages else math.nan, ".2f"),
            )
        windows = Table(title="Last closed event-time windows", expand=True)
        for column in ("window end (UTC)", "messages", "conversations", "reply rate",
                       "p50 1st reply", "p95 1st reply", "spam / 1k msgs"):
            windows.add_column(column, justify="right")
        for w in reversed(self.windows):
            end = datetime.fromtimestamp(w.window_end or 0, tz=UTC)
            windows.add_row(
                end.strftime("%Y-%m-%d %H:%M:%S"), f"{w.messages:,.0f}",
                f"{w.conversations:,.0f}", _ratio(w.reply_rate, ".1%"),
                _duration(w.latency_p50), _duration(w.latency_p95), _ratio(w.spam_per_1k, ".2f"),
            )
        health = Table(title="Pipeline health", expand=True)
        for column in ("events/s", "processed", "invalid", "late", "lag (msgs)"):
            health.add_column(column, justify="right")
        s = self.last
        if s is not None:
            health.add_row(f"{self.rate:,.0f}", f"{s.processed_total:,.0f}",
                           f"{s.invalid_total:,.0f}", f"{s.late_total:,.0f}", f"{s.lag:,.0f}")
        parts: list[object] = [daily, windows, health]
        if self.alerts:
            alerts = Table(title="Firing alerts", expand=True)
            alerts.add_column("alert")
            for alert in self.alerts:
                alerts.add_row(alert)
            parts.append(alerts)
        if self.status:
            parts.append(self.status)
        return Group(*parts)  # type: ignore[arg-type]
