"""A peer's progress, written atomically to a small JSON file the bench polls.

``{"count": n, "first_wall": t, "done_wall": t | null, ...}``: wall time when the
first event was handled and when the ``target``-th was; the file is rewritten at
those two moments at once and otherwise at most every ``interval`` seconds.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import orjson

WINDOW_SECONDS = 60


def peer_parser(description: str | None) -> argparse.ArgumentParser:
    """What bench.run gives every peer: the topic, N and the status file to write."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--status", required=True)
    return parser


def segment_key(event: dict[str, Any]) -> str:
    """The segment every peer counts per window: ``type|platform|channel``."""
    return f"{event.get('type')}|{event.get('platform', '')}|{event.get('channel', '')}"


class Progress:
    def __init__(self, path: str | os.PathLike[str], target: int, interval: float = 0.1) -> None:
        self.path = Path(path)
        self.target = target
        self.interval = interval
        self.count = 0
        self.first_wall: float | None = None
        self.done_wall: float | None = None
        self.extra: dict[str, Any] = {}
        self._written = 0.0

    def begin(self) -> None:
        """Mark the first event's arrival (a batch consumer calls it before the batch)."""
        if self.first_wall is None:
            self.first_wall = time.time()
            self.write(self.first_wall)

    def add(self, n: int = 1) -> None:
        now = time.time()
        if self.first_wall is None:
            self.first_wall = now
            self.count += n
            self.write(now)
            return
        self.count += n
        if self.done_wall is None and self.count >= self.target:
            self.done_wall = now
            self.write(now)
        elif now - self._written >= self.interval:
            self.write(now)

    def write(self, now: float | None = None) -> None:
        self._written = time.time() if now is None else now
        data = {
            "count": self.count, "target": self.target, "first_wall": self.first_wall,
            "done_wall": self.done_wall, "pid": os.getpid(), **self.extra,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(data))
        os.replace(tmp, self.path)


def read(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    try:
        return orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
