"""Test harness: the worker as a real process, topic read-back, and /metrics scraping."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from deploy.local_kafka import free_port
from deploy.processes import proc_stat, stop_process, with_descendants
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def settings_env(settings: Settings, **overrides: Any) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in {**settings.model_dump(), **overrides}.items():
        if value is None:
            env.pop(name.upper(), None)
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[name.upper()] = str(value)
    return env


class WorkerProcess:
    """``python -m streams worker`` with the test's settings; stopped by PID."""

    def __init__(self, settings: Settings, log_path: Path, **overrides: Any) -> None:
        self.port = free_port()
        # one state directory per test (the store's path holds the worker id): a worker
        # restarted by a test finds its local store and checkpoints, as on a real machine
        state_dir = settings.state_dir or log_path.parent / "state"
        self.env = settings_env(
            settings, metrics_port=self.port, **{"state_dir": state_dir, **overrides}
        )
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0, wait: bool = True) -> WorkerProcess:
        """Start the worker; by default wait until it answers on /healthz."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streams", "worker"], env=self.env, cwd=ROOT,
                stdout=log, stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_started(timeout)
        return self

    def wait_started(self, timeout: float = 60.0) -> None:
        wait_until(lambda: self._answers(), timeout, f"worker /healthz ({self.log_path})")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"worker exited with {self.process.returncode}; see {self.log_path}")
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def scrape(self, *names: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample on /metrics, or only those of the families ``names``."""
        query = "?" + urllib.parse.urlencode([("name[]", n) for n in names]) if names else ""
        with urllib.request.urlopen(self.url + "/metrics" + query, timeout=5) as response:
            text = response.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def stop(self, timeout: float = 30.0) -> int:
        if self.process is None:
            return 0
        code = stop_process(self.process, timeout)
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL the worker; whatever it started must go with it (no orphans)."""
        if self.process is not None:
            family = with_descendants([self.process.pid])
            self.process.kill()
            self.process.wait()
            self.process = None
            wait_until(lambda: not [p for p in family if _alive(p)], 15,
                       f"the killed worker's child processes {family[1:]} to exit")

    def stall(self) -> None:
        """SIGSTOP the worker and its child processes, as a VM pause or swap storm does."""
        self._signal_family(signal.SIGSTOP)

    def wake(self) -> None:
        """SIGCONT what :meth:`stall` stopped."""
        self._signal_family(signal.SIGCONT)

    def _signal_family(self, signum: int) -> None:
        if self.process is not None:
            for pid in with_descendants([self.process.pid]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

    def descendants(self) -> list[int]:
        return with_descendants([self.process.pid])[1:] if self.process is not None else []


def _alive(pid: int) -> bool:
    """Running and not a zombie (a reaped child's PID may be reused, rarely: fine here)."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] != b"Z"


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def read_topic(settings: Settings, topic: str) -> list[Any]:
    """Every committed record of a topic, partition by partition in offset order."""

    async def read() -> list[Any]:
        consumer = AIOKafkaConsumer(
            isolation_level="read_committed", enable_auto_commit=False,
            **settings.kafka_client_options(),
        )
        await consumer.start()
        try:
            partitions = sorted(consumer.partitions_for_topic(topic) or ())
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = sorted(consumer.partitions_for_topic(topic) or ())
            tps = [TopicPartition(topic, p) for p in partitions]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            out: dict[int, list[Any]] = {p: [] for p in partitions}
            remaining = {tp for tp in tps if ends[tp] > 0}
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=1000)
                for tp, messages in batch.items():
                    out[tp.partition].extend(messages)
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
            return [m for p in partitions for m in out[p]]
        finally:
            await consumer.stop()

    return asyncio.run(read())
