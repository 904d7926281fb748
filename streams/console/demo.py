"""``messaging-metrics demo``: everything in one command, stopped by Ctrl-C.

Starts what is missing (a local Kafka broker unless KAFKA_BOOTSTRAP_SERVERS is set),
Prometheus and Alertmanager when installed, then the worker and the producer as child
processes, and shows the live view. On Ctrl-C, SIGTERM or ``--duration`` it stops every
process it started, by PID.

Time: the producer replays history up to now, then runs live (``--then-live``), so
that event time never runs ahead of the wall clock: the worker writes every closed
window into the demo's Prometheus at its event time, and Prometheus takes no samples
from the future. Live, a window closes once per window length of wall time.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.live import Live

from deploy.local_kafka import LocalKafka, free_port
from deploy.local_monitoring import LocalMonitoring, TimeCompression, monitoring_available
from deploy.processes import stop_process
from producers.scenarios import INCIDENT_AFTER_SECONDS
from streams.console.live_view import LiveView, snapshot
from streams.settings import Settings

log = logging.getLogger(__name__)

DEMO_HISTORY_SECONDS = 26 * 3600.0  # the producer's warmup when PRODUCER_WARMUP_SECONDS is 0
# The last event half-hour before now is replayed at PRODUCER_SPEED (the warmup before it
# goes as fast as possible): windows close visibly fast, and a scenario's incident
# (INCIDENT_AFTER_SECONDS after the start) begins as the producer goes live.
DEMO_REPLAY_SECONDS = float(INCIDENT_AFTER_SECONDS)
# The demo's window when WINDOW_SECONDS is not set: live, the window tables change every
# 10 s instead of every minute (measured: 26 h of history in 10-s windows, 28,667 window
# closes, caught up and live within 75 s of the producer's start)
DEMO_WINDOW_SECONDS = 10


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


class Child:
    """A child process with its output in a log file; stopped by PID."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        log.info("started %s (pid %d), log %s", name, self.process.pid, self.log_path)

    def check(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with {code}; see {self.log_path}")

    def stop(self, timeout: float = 30.0) -> None:
        stop_process(self.process, timeout)
        log.info("stopped %s (pid %d, exit %s)", self.name, self.process.pid,
                 self.process.returncode)


def _child_env(settings: Settings, **overrides: str) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.update({key.upper(): value for key, value in overrides.items()})
    return env


def _scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def _start_monitoring(
    settings: Settings, worker_port: int, log_dir: Path, console: Console
) -> LocalMonitoring | None:
    """Prometheus + Alertmanager with the project's rules, when the OS has them.

    The rules keep their production durations (``for:``, ranges, ``offset 1d``): the
    producer runs live, so a wall minute is an event minute, as in production. Only
    scrapes and notifications are quicker. (The history races past in about two minutes;
    the ``for:`` durations keep its bursts, a lag of millions included, from firing.)
    """
    if not monitoring_available():
        console.print("[dim]prometheus / prometheus-alertmanager not installed: no alerts "
                      "(apt-get install prometheus prometheus-alertmanager)[/]")
        return None
    compression = TimeCompression(scrape_interval="1s", group_wait="1s", group_interval="5s")
    workdir = log_dir / "monitoring"
    workdir.mkdir()
    # nothing listens on the webhook here: the view reads firing alerts from Alertmanager
    monitoring = LocalMonitoring(
        [f"127.0.0.1:{worker_port}"], f"http://127.0.0.1:{free_port()}/alerts", compression,
        workdir=workdir,
    ).start()
    console.print(f"Prometheus: {monitoring.prometheus_url} (every closed window at its "
                  f"event time)  Alertmanager: {monitoring.alertmanager_url}")
    return monitoring


def _firing(monitoring: LocalMonitoring) -> list[str]:
    try:
        alerts = monitoring.firing_alerts()
    except OSError:
        return []
    return sorted(
        f"{a['labels'].get('alertname')} ({a['labels'].get('severity', '?')}): "
        f"{a['annotations'].get('summary', '')}"
        for a in alerts
    )


def run_demo(settings: Settings, duration: float | None = None) -> int:
    console = Console()
    # Ctrl-C and SIGTERM both stop everything; set SIGINT explicitly, since a shell
    # starts background jobs with it ignored
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    log_dir = Path(tempfile.mkdtemp(prefix="messaging-metrics-demo-"))
    deadline = None if duration is None else time.monotonic() + duration
    with ExitStack() as stack:
        try:
            bootstrap = settings.kafka_bootstrap_servers
            if not bootstrap:
                console.print("[bold]Starting a local Kafka broker[/] (the first run downloads "
                              "its jars with Maven: progress below)")
                broker = LocalKafka(settings.cache_dir).start()
                stack.callback(broker.stop)
                bootstrap = broker.bootstrap_servers
            port = settings.metrics_port or free_port()
            monitoring = _start_monitoring(settings, port, log_dir, console)
            if monitoring is not None:
                stack.callback(monitoring.stop)
            # Live, a window closes once per window length: 10-s windows unless
            # WINDOW_SECONDS says otherwise, so the tables move within seconds
            window = (settings.window_seconds if "window_seconds" in settings.model_fields_set
                      else DEMO_WINDOW_SECONDS)
            overrides = {"kafka_bootstrap_servers": bootstrap, "metrics_port": str(port),
                         "window_seconds": str(window)}
            if monitoring is not None and not settings.history_remote_write_url:
                overrides["history_remote_write_url"] = monitoring.remote_write_url
            env = _child_env(settings, **overrides)
            worker = Child("worker", [sys.executable, "-m", "streams", "worker"], env, log_dir)
            stack.callback(worker.stop)
            # History first, so that a day has closed (the daily row) within about a
            # minute: 26 simulated hours, sent as fast as possible, unless set otherwise
            warmup = settings.producer_warmup_seconds or DEMO_HISTORY_SECONDS
            replay_from = time.time() - DEMO_REPLAY_SECONDS
            producer = Child("producer", [
                sys.executable, "-m", "streams", "produce", "--warmup", str(warmup),
                "--start-ts", f"{replay_from:.3f}", "--then-live",
            ], env, log_dir)
            stack.callback(producer.stop)
            console.print(
                f"Time: {warmup / 3600:g} event-hours of history as fast as possible, the "
                f"last {DEMO_REPLAY_SECONDS / 60:g} minutes at {settings.producer_speed:g}x, "
                f"then live (event time = wall time): a {window}-s window "
                f"closes every {window} s, "
                f"{settings.allowed_lateness_seconds} s after its end."
            )
            console.print(f"worker /metrics: http://{settings.metrics_host}:{port}/metrics; "
                          f"logs in {log_dir}. Ctrl-C stops everything.")
            view = LiveView()
            url = f"http://127.0.0.1:{port}/metrics"
            with Live(view.render(), console=console, refresh_per_second=2) as live:
                while deadline is None or time.monotonic() < deadline:
                    worker.check()
                    producer.check()
                    text = _scrape(url)
                    if text is not None:
                        view.update(snapshot(text))
                    if monitoring is not None:
                        view.alerts = _firing(monitoring)
                        view.status = f"Kafka {bootstrap} | worker pid {worker.process.pid} | " \
                                      f"producer pid {producer.process.pid} | Ctrl-C to stop"
                    else:
                        view.status = "waiting for the worker's /metrics ..."
                    live.update(view.render())
                    time.sleep(1.0)
        except (KeyboardInterrupt, _Stop):
            console.print("stopping ...")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    console.print("stopped: no process left running")
    return 0
