"""Partials merge associatively and commutatively: any order or grouping, same totals."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.partials import (
    GLOBAL_SEGMENT,
    LATENCY_BOUNDS_SECONDS,
    decode,
    encode,
    latency_bucket,
    merged,
    segment_of,
    split_by_segment,
)

keys = st.sampled_from([
    ("sent", "web", "inmail", "recruiter", "text"),
    ("started", "ios", "connection", "inbox"),
    ("first_reply", "sponsored"),
    ("latency_bucket", "inmail", "3"),
    ("latency_sum_ms", "inmail"),
    ("read", "android"),
    ("spam", "unknown", "scam"),
    ("block", "web"),
])
partials = st.dictionaries(keys, st.integers(min_value=0, max_value=10**9), max_size=8)


@given(st.lists(partials, max_size=12), st.randoms())
@settings(max_examples=200)
def test_merge_is_order_and_grouping_independent(parts, rnd: random.Random) -> None:
    whole = merged(parts)
    shuffled = parts[:]
    rnd.shuffle(shuffled)
    cut = rnd.randint(0, len(shuffled))
    regrouped = merged([merged(shuffled[:cut]), merged(shuffled[cut:])])
    assert regrouped == whole
    assert merged([whole, {}]) == whole


@given(partials)
def test_encode_round_trip_and_split_by_segment(partial) -> None:
    assert decode(encode(partial)) == partial
    split = split_by_segment(partial)
    assert merged(split.values()) == partial
    for segment, part in split.items():
        assert all(segment_of(key) == segment for key in part)


def test_segments() -> None:
    assert segment_of(("sent", "web", "inmail", "member", "text")) == "inmail"
    assert segment_of(("spam", "unknown", "spam")) == GLOBAL_SEGMENT
    assert segment_of(("read", "web")) == GLOBAL_SEGMENT


def test_latency_buckets_are_upper_inclusive() -> None:
    assert latency_bucket(0) == 0
    assert latency_bucket(60_000) == 0
    assert latency_bucket(60_001) == 1
    assert latency_bucket(LATENCY_BOUNDS_SECONDS[-1] * 1000 + 1) == len(LATENCY_BOUNDS_SECONDS)
