"""Keep the C allocator's memory close to what is in use: few arenas, and free memory
given back to the system now and then.

A batch allocates and frees tens of MB (fetched records, decoded events, the batch's
records), and RocksDB's threads allocate beside it. glibc keeps freed memory for reuse
and returns it only from the top of its heaps, so a long-running ingest process held
about 45 MiB per two partitions it no longer used (measured offline: what
``malloc_trim`` gave back after a run). Trimming every few seconds costs milliseconds.

glibc also gives each new thread that allocates an arena of its own, up to eight per
core, and an arena's free memory serves only the threads on it: RocksDB's background
threads held a 64 MiB arena, 40 MiB of it resident, in each ingest process. Two arenas
(``MALLOC_ARENA_MAX``, glibc's own knob, unless it is set already): 696 MiB against 748
at 4.9M conversations, one run each (bench/README).

Elsewhere than glibc (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from collections.abc import Callable
from typing import Any

TRIM_EVERY_SECONDS = 5.0
MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # glibc's mallopt parameter behind MALLOC_ARENA_MAX


def _libc_function(name: str) -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        function: Any = getattr(libc, name)
        return function  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_TRIM = _libc_function("malloc_trim")
_MALLOPT = _libc_function("mallopt")
_last = time.monotonic()


def limit_malloc_arenas() -> None:
    """At most ``MALLOC_ARENA_MAX`` arenas (``MALLOC_ARENAS`` unless set) in this process
    from now on, and in the processes it starts (glibc reads the variable as they start).
    Called before the worker starts any thread."""
    arenas = int(os.environ.setdefault("MALLOC_ARENA_MAX", str(MALLOC_ARENAS)))
    if _MALLOPT is not None:
        _MALLOPT(M_ARENA_MAX, arenas)


def release_free_memory() -> None:
    """Trim the allocator's free memory if it was not done in ``TRIM_EVERY_SECONDS``."""
    global _last
    now = time.monotonic()
    if _TRIM is None or now - _last < TRIM_EVERY_SECONDS:
        return
    _last = now
    _TRIM(0)
