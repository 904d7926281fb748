"""Distinct counts that merge exactly: Apache DataSketches' CPC sketch.

Why CPC and not HLL: a merged CPC sketch's estimate depends only on the set of items
seen, not on how they were grouped into partials or in which order those merged (we
measured datasketches' HLL union giving different estimates for different groupings).
Batch boundaries differ between a live run, a run with a crash and an offline replay;
with CPC all three give the identical number. lg_k = 13: about 0.7 % standard error,
~5 KB per window at 100k distinct senders.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

import datasketches

LG_K = 13


def sketch_of(items: Iterable[str]) -> bytes:
    sketch = datasketches.cpc_sketch(LG_K)
    for item in items:
        sketch.update(item)
    return sketch.serialize()


def union(serialized: Iterable[bytes]) -> bytes:
    """Merge serialized sketches; the result is the same for any grouping and order."""
    merged = datasketches.cpc_union(LG_K)
    for raw in serialized:
        merged.update(datasketches.cpc_sketch.deserialize(raw))
    return merged.get_result().serialize()


def estimate(serialized: bytes) -> int:
    """The distinct count, from a sketch that went through :func:`union`."""
    return round(datasketches.cpc_sketch.deserialize(serialized).get_estimate())


def to_text(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def from_text(text: str) -> bytes:
    return base64.b64decode(text)
