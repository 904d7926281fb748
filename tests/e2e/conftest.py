"""End-to-end fixtures: a webhook receiver, and Prometheus + Alertmanager per test."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from deploy.local_monitoring import monitoring_available


class WebhookReceiver:
    """Collects Alertmanager's webhook posts (loopback, a free port)."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.posts.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def firing(self) -> set[tuple[str, str]]:
        """(alertname, severity) of every alert ever posted as firing."""
        return {
            (alert["labels"]["alertname"], alert["labels"].get("severity", ""))
            for post in self.posts for alert in post["alerts"] if alert["status"] == "firing"
        }


@pytest.fixture(autouse=True)
def _monitoring_installed() -> None:
    if not monitoring_available():
        if os.environ.get("CI"):
            pytest.fail("prometheus and prometheus-alertmanager must be installed in CI")
        pytest.skip("prometheus / prometheus-alertmanager not installed")
