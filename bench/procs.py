"""Processes the bench starts (always stopped by PID) and what /proc says about them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from deploy.processes import proc_stat, stop_process, with_descendants

ROOT = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")


class Processes:
    """Starts subprocesses in their own session and stops each by PID (TERM, then KILL).

    ``stop_all()`` (also run on Ctrl-C by :func:`bench.run.main`) stops whatever is
    still running, newest first; ``adopt(stop)`` registers a process someone else
    started (e.g. the tests' :class:`~tests.harness.WorkerProcess`).
    """

    def __init__(self) -> None:
        self._stoppers: list[tuple[object, Callable[[], object]]] = []

    def start(
        self, argv: Sequence[str], *, env: dict[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                list(argv), env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self._stoppers.append((proc, lambda: stop_pid(proc)))
        return proc

    def python(
        self, module: str, *args: str, env: dict[str, str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        return self.start([sys.executable, "-m", module, *args], env=env, log_path=log_path)

    def adopt(self, handle: object, stop: Callable[[], object]) -> None:
        self._stoppers.append((handle, stop))

    def stop(self, handle: object) -> None:
        for i, (known, stopper) in enumerate(self._stoppers):
            if known is handle:
                del self._stoppers[i]
                stopper()
                return

    def stop_all(self) -> None:
        while self._stoppers:
            _, stopper = self._stoppers.pop()
            try:
                stopper()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"bench: could not stop a process: {exc}", file=sys.stderr)


def stop_pid(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int | None:
    """SIGTERM the process by PID, wait, SIGKILL if it does not go."""
    return stop_process(proc, timeout)


# --- /proc -------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    fields = proc_stat(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # fields 14 and 15 of stat(5)


def status_kb(pid: int, name: str) -> int:
    """A ``kB`` line of /proc/<pid>/status (VmHWM = peak RSS, VmRSS = current RSS)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of a JVM's threads by what they do: ``jit`` (the compiler threads),
    ``gc`` (the collector's) and ``work`` (everything else: request handlers, network,
    coordinators, the log cleaner). Compiling is a cost of a young JVM, not of the
    load; a fresh broker pays it during its first heavy run."""
    out = {"jit": 0.0, "gc": 0.0, "work": 0.0}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except OSError:
            continue  # the thread ended
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / _TICKS
        part = "jit" if "CompilerThre" in name else (
            "gc" if name.startswith(("GC Thread", "G1 ")) else "work"
        )
        out[part] += seconds
    return out


@dataclass
class Sample:
    wall: float
    cpu: float
    count: float
    parts: dict[str, float] = field(default_factory=dict)  # by thread class (the broker)


@dataclass
class Sampler:
    """CPU of a set of processes (and their descendants) against a progress count."""

    pids: list[int]
    samples: list[Sample] = field(default_factory=list)
    by_thread: bool = False  # also CPU by thread class (one JVM: the broker)

    def sample(self, count: float) -> Sample:
        pids = with_descendants(self.pids)
        parts = thread_cpu_seconds(self.pids[0]) if self.by_thread else {}
        sample = Sample(time.time(), sum(cpu_seconds(p) for p in pids), count, parts)
        self.samples.append(sample)
        return sample

    def cpu_at(self, wall: float, part: str | None = None) -> float:
        """CPU seconds at a wall time, interpolated between samples (of one thread
        class, with ``part``)."""
        samples = self.samples

        def cpu(sample: Sample) -> float:
            return sample.cpu if part is None else sample.parts.get(part, 0.0)

        if not samples:
            return 0.0
        if wall <= samples[0].wall:
            return cpu(samples[0])
        for before, after in pairwise(samples):
            if before.wall <= wall <= after.wall:
                span = after.wall - before.wall
                frac = (wall - before.wall) / span if span > 0 else 1.0
                return cpu(before) + frac * (cpu(after) - cpu(before))
        return cpu(samples[-1])

    def peak_rss_bytes(self) -> int:
        return 1024 * sum(status_kb(p, "VmHWM") for p in with_descendants(self.pids))

    def rss_bytes(self) -> int:
        return 1024 * sum(status_kb(p, "VmRSS") for p in with_descendants(self.pids))
