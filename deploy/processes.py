"""Stopping a child process by PID: SIGTERM, a bounded wait, then SIGKILL."""

from __future__ import annotations

import signal
import subprocess


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
