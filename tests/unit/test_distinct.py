"""Distinct senders: accurate, and identical for any grouping of the partials."""

from __future__ import annotations

import random

from streams import distinct


def test_within_two_percent_at_100k_distinct_senders() -> None:
    ids = [f"m-{i:07d}" for i in range(100_000)]
    estimate = distinct.estimate(distinct.union([distinct.sketch_of(ids)]))
    assert abs(estimate - 100_000) / 100_000 < 0.02, estimate


def test_estimate_does_not_depend_on_grouping_or_order() -> None:
    rng = random.Random(5)
    ids = [f"m-{rng.randrange(10**9)}" for _ in range(30_000)]
    whole = distinct.estimate(distinct.union([distinct.sketch_of(ids)]))
    rng.shuffle(ids)
    chunks = [distinct.sketch_of(ids[i : i + 777]) for i in range(0, len(ids), 777)]
    rng.shuffle(chunks)
    assert distinct.estimate(distinct.union(chunks)) == whole
    half = len(chunks) // 2
    nested = distinct.union([distinct.union(chunks[:half]), distinct.union(chunks[half:])])
    assert distinct.estimate(nested) == whole


def test_duplicates_do_not_count_and_text_round_trips() -> None:
    raw = distinct.union([distinct.sketch_of(["a", "b", "a"]), distinct.sketch_of(["b"])])
    assert distinct.estimate(distinct.from_text(distinct.to_text(raw))) == 2
