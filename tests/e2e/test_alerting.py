"""End to end, in compressed time: simulator -> Kafka -> worker -> Prometheus ->
Alertmanager -> a webhook. An incident scenario's alert reaches the webhook; the
baseline fires no risk alert; every Grafana panel query returns data.

Time compression: event time runs SPEED times faster than wall time, windows are
WINDOW event-seconds (one wall second), and the alert rules are rendered with every
``for:`` and range divided by SPEED and the "same time yesterday" baseline replaced by
BASELINE_OFFSET of wall time.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from deploy.grafana_board import build_dashboard, panel_queries
from deploy.local_kafka import free_port
from deploy.local_monitoring import LocalMonitoring, TimeCompression
from producers.profile import SimulationProfile
from streams.kafka.io import ensure_topics
from streams.settings import Settings
from tests.e2e.conftest import WebhookReceiver
from tests.harness import ROOT, WorkerProcess, settings_env, wait_until

pytestmark = pytest.mark.e2e

SPEED = 720.0  # event seconds per wall second: a simulated day in two wall minutes
WINDOW = 720  # event seconds: one window per wall second
RATE = 3000  # events per wall second, i.e. per window
# The baseline stack's day is flat (no time of day). Prometheus stamps samples with
# wall time, so "the same time yesterday" is DAY wall seconds ago only while windows
# close in step with event time. With the day's shape (1.6x the mean at the peak:
# 5,100 events/s per stack, two stacks on two cores) windows closed up to 30 s behind
# the producer by day and caught up by night, by a different amount each day; on the
# steep edges of the diurnal p95 latency and InMail response rate that slide made the
# baseline's ratios cross their thresholds (p95 2.14, InMail 0.49). The history
# (messaging_eventtime_*) has no slide, but the alerts read the live gauges: a rule is
# evaluated at wall time and cannot wait for a window's history to be complete. The incident stacks keep the day's shape: their
# incidents are measured against it, and a 6-hour notification delay on a flat day
# barely moves the p95 (23,900 s at most against 12,500).
FLAT_DAY = 0.0
SHAPED_DAY = SimulationProfile().diurnal_amplitude  # the simulator's own
WARMUP = 36 * 3600.0  # event seconds of history first: reply latencies run to days
DAY = 86_400 / SPEED  # wall seconds: the alerts' "same time yesterday"
INMAIL_HORIZON = 36 * 3600.0  # event seconds: finals within the run, and longer than a day
# (so that yesterday, the provisional InMail cohort, is not final and gone yet)
COMPRESSION = TimeCompression(
    baseline_offset=f"{DAY:.0f}s",
    # ranges shrunk 90x, not 720x: a 5m range then spans 3.3 one-second scrapes and
    # windows (in production, 20 scrapes and 5 windows), a 1h range 40 windows. At 180x
    # a ratio averaged over 10 windows was too noisy to be quiet for sure. for: 60x, so a
    # condition must hold for several windows before it fires.
    for_scale=1 / 60, range_scale=1 / 90,
    # The pipeline's health (a stall, a worker or Kafka gone, lag) is judged in wall
    # time: a process pauses for seconds whatever event time's speed. Shrunk 60-90x, the
    # stall rule fired in CI on 8 s or so without a window close on the baseline (two
    # stacks on two cores); shrunk 10x it needs a minute (12 event hours), and a
    # pipeline stuck for good still fires.
    wall_scale=1 / 10,
    scrape_interval="1s", group_wait="1s", group_interval="2s", repeat_interval="1m",
)
PANEL_STEP = 60.0  # seconds: every history sample (a day's too) is in some step's lookback
CATCH_UP_SPAN = 5.0  # wall seconds over which windows must close at event time's pace
TOPIC_FIELDS = ("events_topic", "dlq_topic", "partials_topic", "ingest_state_topic",
                "metrics_topic", "activity_topic", "risk_state_topic", "flagged_topic",
                "aggregate_state_topic")


class Stack:
    """Worker + producer + Prometheus/Alertmanager for one scenario; stopped by PID."""

    def __init__(self, settings: Settings, tmp_path: Path, webhook: WebhookReceiver) -> None:
        self.settings = settings.model_copy(update={
            "window_seconds": WINDOW,
            # compressed time cannot wait 30 days for an InMail day to be final
            "inmail_response_horizon_seconds": INMAIL_HORIZON,
        })
        self.webhook = webhook
        asyncio.run(ensure_topics(self.settings))
        # the history (every window at its event time) goes to this stack's Prometheus,
        # which starts later (watch): the stage retries until it answers
        prometheus_port = free_port()
        self.worker = WorkerProcess(
            self.settings, tmp_path / "worker.log",
            history_remote_write_url=f"http://127.0.0.1:{prometheus_port}/api/v1/write",
        ).start()
        self.monitoring = LocalMonitoring(
            [f"127.0.0.1:{self.worker.port}"], webhook.url, COMPRESSION,
            workdir=tmp_path / "monitoring", prometheus_port=prometheus_port,
        )
        self.monitoring.workdir.mkdir()
        self.producer: subprocess.Popen[bytes] | None = None
        self.live_from = self.incident_ts = float("inf")
        self.tmp_path = tmp_path

    def produce(
        self, scenario: str, incident_after: float, duration: float,
        diurnal_amplitude: float = SHAPED_DAY,
    ) -> None:
        env = settings_env(self.settings)
        # The event time where the producer's live part starts: in the past by as much
        # as the run can cover, so that no window ends after now (the history writes
        # each at its end, and Prometheus' newest samples are the scrapes at now).
        self.live_from = time.time() - duration * SPEED
        self.incident_ts = self.live_from + incident_after
        with open(self.tmp_path / "producer.log", "ab") as out:
            self.producer = subprocess.Popen(
                [sys.executable, "-m", "streams", "produce", "--scenario", scenario,
                 "--rate", str(RATE), "--speed", str(SPEED), "--warmup", str(WARMUP),
                 "--start-ts", repr(self.live_from),
                 "--diurnal-amplitude", str(diurnal_amplitude),
                 "--incident-after", str(incident_after), "--duration", str(duration),
                 "--seed", "17"],
                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            )

    def watch(self) -> None:
        """Start Prometheus and Alertmanager once the worker has caught up.

        The warmup (history, sent as fast as possible) is a backlog, not traffic to
        alert on. Caught up = a window past the start of live traffic has closed, and
        windows close no faster than event time runs (SPEED), so the backlog behind
        them is gone too. (Neither lag nor a first live window is enough: windows
        behind by 20 s raced at 1,000x for the first half minute of the watch, the
        day that became "yesterday" ran 3.6 event hours ahead of today, and the
        InMail and p95 ratios misfired so.)
        """
        closes: deque[tuple[float, float]] = deque()  # (monotonic, closed up to)

        def caught_up() -> bool:
            now, closed = time.monotonic(), closed_up_to(self.worker.scrape())
            closes.append((now, closed))
            while now - closes[0][0] > CATCH_UP_SPAN:
                closes.popleft()
            then, closed_then = closes[0]
            return (
                closed > self.live_from
                and now - then >= CATCH_UP_SPAN - 1
                # a window (one wall second) of slack: they close in steps
                and closed - closed_then <= SPEED * (now - then) * 1.2 + WINDOW
            )

        wait_until(caught_up, 120, "the worker to catch up with the warmup")
        self.monitoring.start()

    def incident_closed(self) -> bool:
        """Has a window holding the incident's first events closed?"""
        return closed_up_to(self.worker.scrape()) > self.incident_ts

    def stop(self) -> None:
        if self.producer is not None and self.producer.poll() is None:
            self.producer.terminate()
            self.producer.wait(20)
        self.monitoring.stop()
        assert self.worker.stop() == 0


@pytest.fixture
def make_stack(settings: Settings, tmp_path: Path) -> Iterator[Callable[[str], Stack]]:
    """Stacks with their own topics, app id and webhook receiver; all stopped after.

    (Their topics carry the test's prefix, so the settings fixture deletes them.)
    """
    stacks: list[tuple[Stack, WebhookReceiver]] = []

    def make(name: str) -> Stack:
        own = settings.model_copy(update={
            "app_id": f"{settings.app_id}-{name}",
            **{f: f"{getattr(settings, f)}.{name}" for f in TOPIC_FIELDS},
        })
        receiver = WebhookReceiver()
        receiver.thread.start()
        directory = tmp_path / name
        directory.mkdir()
        stack = Stack(own, directory, receiver)
        stacks.append((stack, receiver))
        return stack

    try:
        yield make
    finally:
        for stack, receiver in stacks:
            try:
                stack.stop()
            finally:
                receiver.server.shutdown()
                receiver.server.server_close()


def closed_up_to(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> float:
    """The end (event time) of the newest window a worker has closed."""
    return max((v for (n, _), v in scraped.items()
                if n == "messaging_window_end_timestamp_seconds"), default=0.0)


def firing_in_prometheus(monitoring: LocalMonitoring) -> set[str]:
    return {
        r["metric"]["alertname"]
        for r in monitoring.query('ALERTS{alertstate="firing"}')
    }


def window_close_gaps(monitoring: LocalMonitoring, seconds: float, top: int = 3) -> str:
    """The longest wall-time waits between window closes over the last ``seconds``, from
    Prometheus' raw scrapes: what MessagingPipelineStalled judges, for the test's output."""
    waits: list[tuple[float, float]] = []  # (wait, from)
    scrape_gap = 0.0
    for series in monitoring.query(f"messaging_window_end_timestamp_seconds[{seconds:.0f}s]"):
        samples = [(float(t), float(v)) for t, v in series["values"]]
        closes = [t for (_, before), (t, v) in pairwise(samples) if v != before]
        waits += [(b - a, a) for a, b in pairwise(closes)]
        scrape_gap = max([scrape_gap] + [b - a for (a, _), (b, _) in pairwise(samples)])
    longest = ", ".join(f"{wait:.0f}s from {time.strftime('%H:%M:%S', time.localtime(at))}"
                        for wait, at in sorted(waits, reverse=True)[:top])
    return f"{longest or 'none'} (scrapes at most {scrape_gap:.0f}s apart)"


def test_spam_wave_alert_reaches_the_webhook(make_stack) -> None:
    stack = make_stack("spam")
    stack.produce("spam-wave", incident_after=20 * SPEED, duration=300)
    stack.watch()
    started = time.monotonic()
    wait_until(lambda: {("MessagingSpamReportsHigh", "warning"),
                        ("MessagingSpamReportsHigh", "critical")} & stack.webhook.firing(),
               120, "the spam alert at the webhook", interval=1.0)
    print(f"spam-wave: spam alert at the webhook {time.monotonic() - started:.0f}s "
          f"after monitoring started (incident 20s after the warmup)")


def test_latency_incident_alerts_while_the_baseline_stays_quiet(make_stack) -> None:
    """Two stacks side by side, so the simulated day each needs runs once."""
    baseline, incident_stack = make_stack("baseline"), make_stack("latency")
    # The incident starts this long (wall) after the live start: a day of history in
    # Prometheus first, for "yesterday", after both warmups' catch-up (20-40 s).
    incident = DAY + 60
    # the producers outlive the watch (stopped at teardown): a stopped producer would,
    # rightly, look like a stalled pipeline
    baseline.produce("baseline", incident_after=0, duration=incident + 300,
                     diurnal_amplitude=FLAT_DAY)
    incident_stack.produce("latency-incident", incident_after=incident * SPEED,
                           duration=incident + 300)
    # Both catch up before either is watched: "yesterday" is compared with today one
    # compressed day later, so the day that becomes "yesterday" must run as today will.
    # (Watched while the other stack's warmup took both cores, the baseline's windows
    # closed up to 7 s late, then raced, and its p95 ratio touched 1.81.)
    for stack in (baseline, incident_stack):
        stack.watch()
    started = time.monotonic()
    seen: set[str] = set()
    incident_at = fired_at = None  # when the incident's first window closed; the alert
    # What the alert waits for after the incident's first window: the p95 to rise (a
    # few windows), its 30m average (20 s) to cross the threshold, its for: (15 s), a
    # rule evaluation and Alertmanager's group_wait (1 s each): 20-40 s. The baseline
    # is watched until incident + 60 s at least; past that, only a late alert is
    # waited for.
    while (elapsed := time.monotonic() - started) < incident + 150 and (
        fired_at is None or incident_at is None or elapsed < incident_at + 60
    ):
        seen |= firing_in_prometheus(baseline.monitoring)
        if incident_at is None and incident_stack.incident_closed():
            incident_at = elapsed
        if fired_at is None and any(
            name.startswith("MessagingFirstReplyLatency")
            for name, _ in incident_stack.webhook.firing()
        ):
            fired_at = elapsed
        time.sleep(1.0)
    print(f"latency-incident: the incident's first window closed {incident_at or 0:.0f}s "
          f"after monitoring started, its latency alert reached the webhook "
          f"{(fired_at or 0) - (incident_at or 0):.0f}s later")
    watched = time.monotonic() - started
    print(f"the longest waits for a window to close: baseline "
          f"{window_close_gaps(baseline.monitoring, watched)}; incident "
          f"{window_close_gaps(incident_stack.monitoring, watched)}")
    assert incident_at is not None, "the incident's windows never closed"
    assert fired_at is not None, "the latency alert never reached the webhook"
    assert fired_at > incident_at, "fired before the incident"
    assert seen == set(), f"alerts fired on baseline traffic: {seen}"
    assert baseline.webhook.firing() == set()
    # Every panel target of the board, variables substituted, returns data over the
    # run, queried as a Grafana panel does (a range; live gauges at the end of it, the
    # history over the simulated days)
    span = (baseline.live_from - WARMUP, time.time())
    empty = [
        (title, expr) for title, expr in panel_queries(build_dashboard(), {})
        if not baseline.monitoring.query_range(expr, *span, step=PANEL_STEP)
    ]
    assert empty == []
