"""The C allocator's limits: few arenas, in this process and in those it starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams import process_memory


def test_the_worker_caps_the_arenas_unless_the_operator_did(monkeypatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(process_memory, "_MALLOPT", lambda *args: calls.append(args) or 1)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    process_memory.limit_malloc_arenas()
    assert os.environ["MALLOC_ARENA_MAX"] == "2"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    process_memory.limit_malloc_arenas()
    assert os.environ["MALLOC_ARENA_MAX"] == "4"
    assert calls == [(process_memory.M_ARENA_MAX, 2), (process_memory.M_ARENA_MAX, 4)]


PROBE = """
import ctypes, sys, threading
from streams import process_memory
if sys.argv[1] == "capped":
    process_memory.limit_malloc_arenas()
together = threading.Barrier(8)
def allocate():
    together.wait()
    for _ in range(2000):
        [bytearray(4096) for _ in range(20)]  # beyond pymalloc: glibc's malloc
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" paragraph each, on stderr
"""


@pytest.mark.skipif(process_memory._MALLOPT is None, reason="not glibc")
@pytest.mark.parametrize(("mode", "at_most"), [("capped", 2), ("as glibc pleases", 64)])
def test_threads_allocating_at_once_share_the_capped_arenas(mode: str, at_most: int) -> None:
    """Eight threads allocating at once get arenas of their own unless capped."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    probe = subprocess.run([sys.executable, "-c", PROBE, mode], env=env,
                           capture_output=True, text=True, check=True)
    arenas = probe.stderr.count("Arena ")
    assert 1 <= arenas <= at_most, probe.stderr
    if mode != "capped":
        assert arenas > 2, "the uncapped case never used more arenas: the probe shows nothing"
