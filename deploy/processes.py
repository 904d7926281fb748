"""Child processes: stopping one by PID (SIGTERM, a bounded wait, then SIGKILL), and
finding a process's descendants in /proc."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> int:
    """Ask politely, wait up to ``timeout`` seconds, then kill; return the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def with_descendants(pids: Sequence[int]) -> list[int]:
    tree = _children()
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, ()))
    return out
