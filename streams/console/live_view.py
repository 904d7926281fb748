"""The demo's terminal view: last closed windows and pipeline health, from /metrics.

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

    @property
    def reply_rate(self) -> float:
        return self.first_replies / self.conversations if self.conversations else math.nan

    @property
    def spam_per_1k(self) -> float:
        return 1000 * self.spam_reports / self.messages if self.messages else math.nan


def snapshot(metrics_text: str) -> Snapshot:
    sums: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
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
        parts: list[object] = [windows, health]
        if self.alerts:
            alerts = Table(title="Firing alerts", expand=True)
            alerts.add_column("alert")
            for alert in self.alerts:
                alerts.add_row(alert)
            parts.append(alerts)
        if self.status:
            parts.append(self.status)
        return Group(*parts)  # type: ignore[arg-type]
