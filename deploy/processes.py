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


def proc_stat(pid: int) -> list[bytes] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state, ppid, ...: field 3
    of stat(5) is index 0), or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()  # the name may hold spaces and ")"


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = proc_stat(int(entry))
        if fields is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def with_descendants(pids: Sequence[int]) -> list[int]:
    tree = _children()
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, ()))
    return out
