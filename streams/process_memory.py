"""Give the C allocator's free memory back to the system, now and then.

A batch allocates and frees tens of MB (fetched records, decoded events, the batch's
records), and RocksDB's threads allocate beside it. glibc keeps freed memory for reuse
and returns it only from the top of its heaps, so a long-running ingest process held
about 45 MiB per two partitions it no longer used (measured offline: what
``malloc_trim`` gave back after a run). Trimming every few seconds costs milliseconds.
Elsewhere than glibc (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable

TRIM_EVERY_SECONDS = 5.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()
_last = time.monotonic()


def release_free_memory() -> None:
    """Trim the allocator's free memory if it was not done in ``TRIM_EVERY_SECONDS``."""
    global _last
    now = time.monotonic()
    if _TRIM is None or now - _last < TRIM_EVERY_SECONDS:
        return
    _last = now
    _TRIM(0)
