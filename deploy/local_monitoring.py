"""Prometheus and Alertmanager from the OS packages (Debian's ``prometheus`` and
``prometheus-alertmanager``), started on free loopback ports with the project's rules.

Used by the end-to-end tests and by the demo. Time can be compressed for both: the
alert rules are rendered with shorter ``for:`` durations, ranges and baseline offset
(see :func:`deploy.prometheus_rules.render_alert_rules`).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from deploy.local_kafka import free_port
from deploy.processes import stop_process
from deploy.prometheus_rules import (
    render_alert_rules,
    render_alertmanager_config,
    render_prometheus_config,
)

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
RECORDING_RULES = ROOT / "prometheus" / "recording_rules.yml"
PROMETHEUS_BINARIES = ("prometheus",)
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")


def find_binary(names: tuple[str, ...]) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def monitoring_available() -> bool:
    return bool(find_binary(PROMETHEUS_BINARIES) and find_binary(ALERTMANAGER_BINARIES))


@dataclass(frozen=True)
class TimeCompression:
    """How alerting is sped up to match the producer's event-time compression."""

    baseline_offset: str = "1d"
    for_scale: float = 1.0
    range_scale: float = 1.0
    wall_scale: float = 1.0  # the pipeline-health rules' for: and ranges (wall time)
    scrape_interval: str = "5s"
    group_wait: str = "30s"
    group_interval: str = "5m"
    repeat_interval: str = "4h"


@dataclass
class LocalMonitoring:
    """Alertmanager + Prometheus scraping ``worker_targets``; stopped by PID."""

    worker_targets: list[str]
    webhook_url: str
    compression: TimeCompression = field(default_factory=TimeCompression)
    workdir: Path | None = None
    prometheus_port: int = 0
    alertmanager_port: int = 0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _own_workdir: bool = False

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def remote_write_url(self) -> str:
        """Where a worker's history stage writes (``HISTORY_REMOTE_WRITE_URL``)."""
        return f"{self.prometheus_url}/api/v1/write"

    @property
    def alertmanager_url(self) -> str:
        return f"http://127.0.0.1:{self.alertmanager_port}"

    def start(self, timeout: float = 30.0) -> LocalMonitoring:
        prometheus = find_binary(PROMETHEUS_BINARIES)
        alertmanager = find_binary(ALERTMANAGER_BINARIES)
        if not prometheus or not alertmanager:
            raise RuntimeError("prometheus and prometheus-alertmanager must be installed "
                               "(Debian: apt-get install prometheus prometheus-alertmanager)")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="mm-monitoring-"))
            self._own_workdir = True
        c = self.compression
        self.prometheus_port = self.prometheus_port or free_port()
        self.alertmanager_port = self.alertmanager_port or free_port()
        (self.workdir / "alertmanager.yml").write_text(render_alertmanager_config(
            self.webhook_url, group_wait=c.group_wait, group_interval=c.group_interval,
            repeat_interval=c.repeat_interval,
        ))
        shutil.copy(RECORDING_RULES, self.workdir / "recording_rules.yml")
        (self.workdir / "alert_rules.yml").write_text(render_alert_rules(
            c.baseline_offset, c.for_scale, range_scale=c.range_scale,
            wall_scale=c.wall_scale,
        ))
        (self.workdir / "prometheus.yml").write_text(render_prometheus_config(
            self.worker_targets, f"127.0.0.1:{self.alertmanager_port}",
            ["recording_rules.yml", "alert_rules.yml"], c.scrape_interval,
        ))
        self._spawn("alertmanager", [
            alertmanager, f"--config.file={self.workdir / 'alertmanager.yml'}",
            f"--storage.path={self.workdir / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{self.alertmanager_port}",
            "--cluster.listen-address=",  # a single instance: no gossip port
        ])
        self._spawn("prometheus", [
            prometheus, f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
            "--web.enable-remote-write-receiver",  # the workers' history stage writes here
        ])
        try:
            self._wait_ready(self.alertmanager_url + "/-/ready", timeout)
            self._wait_ready(self.prometheus_url + "/-/ready", timeout)
        except BaseException:
            self.stop()
            raise
        log.info("Prometheus on %s, Alertmanager on %s", self.prometheus_url,
                 self.alertmanager_url)
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        assert self.workdir is not None
        with open(self.workdir / f"{name}.log", "ab") as out:
            self.processes.append(subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            ))

    def _wait_ready(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited; see logs in {self.workdir}")
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} not ready within {timeout}s")
            time.sleep(0.2)

    # --- queries ---------------------------------------------------------------------
    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant PromQL query (now, or at ``at``); the result (or raises on an error)."""
        return self._api("query", {"query": expr, **({} if at is None else {"time": at})})

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range query, as a Grafana time series panel makes it; the result matrix."""
        return self._api("query_range", {"query": expr, "start": start, "end": end,
                                         "step": step})

    def _api(self, endpoint: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        url = f"{self.prometheus_url}/api/v1/{endpoint}?{urllib.parse.urlencode(parameters)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"{endpoint} failed: {parameters}: {body}")
        result = body["data"]["result"]
        return result if isinstance(result, list) else [result]

    def firing_alerts(self) -> list[dict[str, Any]]:
        """Alerts Alertmanager holds as active (firing, not silenced or inhibited)."""
        url = self.alertmanager_url + "/api/v2/alerts?active=true&silenced=false&inhibited=false"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)

    def stop(self, timeout: float = 15.0) -> None:
        for process in self.processes:
            stop_process(process, timeout)
        self.processes.clear()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

