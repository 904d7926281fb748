"""Mergeable partial aggregates: flat integer counters keyed by metric and labels.

A partial is a ``Counter``-like ``dict[Key, int]`` where a key is a tuple
``(metric, *label values)``. Merging is integer addition, so it is associative and
commutative and any order or grouping of partials gives the same totals exactly.
Latency is held as a fixed-bucket histogram in integer milliseconds for the same
reason (float sums would depend on the order of addition).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Final

from streams.events import CHANNELS

Key = tuple[str, ...]
Partial = dict[Key, int]

SENT: Final = "sent"  # platform, channel, sender_type, content_type
STARTED: Final = "started"  # platform, channel, entry_point
FIRST_REPLY: Final = "first_reply"  # channel
LATENCY_BUCKET: Final = "latency_bucket"  # channel, bucket index (non-cumulative)
LATENCY_SUM_MS: Final = "latency_sum_ms"  # channel
READ: Final = "read"  # platform
SPAM: Final = "spam"  # channel (of the reported conversation), reason
BLOCK: Final = "block"  # platform
EVENTS: Final = "events"  # type: every accepted event, used to count late ones
ANSWER: Final = "answer"  # answer: InMail answers (accepted, declined) in the window
ACTIVE_SENDERS: Final = "active_senders"  # no labels: the window's distinct-sender estimate
FLAGGED: Final = "flagged"  # rule: senders the risk stage flagged in the window
# Cohorts, counted in the period of the conversation's start, not of the event:
COHORT_STARTED: Final = "cohort_started"  # channel: conversations started (by hour)
COHORT_REPLY: Final = "cohort_reply"  # channel, latency bucket: their first replies
COHORT_LATENCY_SUM_MS: Final = "cohort_latency_sum_ms"  # channel, latency bucket
INMAIL_SENT: Final = "inmail_sent"  # sender_type: InMails sent (by day)
INMAIL_RESPONSE: Final = "inmail_response"  # sender_type, response: their first responses

# First-reply latency bucket upper bounds in seconds: a minute to a week.
LATENCY_BOUNDS_SECONDS: Final = (
    60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800,
)
_LATENCY_BOUNDS_MS: Final = tuple(b * 1000 for b in LATENCY_BOUNDS_SECONDS)
# Cohort response horizons, each a bucket bound: replied within 1 h, 24 h, 7 days.
REPLY_HORIZONS: Final = {"1h": 3600, "24h": 86_400, "7d": 604_800}
HORIZON_BUCKET: Final = {name: LATENCY_BOUNDS_SECONDS.index(s) for name, s in REPLY_HORIZONS.items()}

UNKNOWN_CHANNEL: Final = "unknown"
GLOBAL_SEGMENT: Final = "all"
SEGMENTS: Final = (*CHANNELS, GLOBAL_SEGMENT)


def latency_bucket(latency_ms: int) -> int:
    """Index of the first bucket whose bound is >= latency (len(bounds) is +Inf)."""
    return bisect_left(_LATENCY_BOUNDS_MS, latency_ms)


def merge_into(target: Partial, source: Mapping[Key, int]) -> Partial:
    for key, value in source.items():
        target[key] = target.get(key, 0) + value
    return target


def merged(partials: Iterable[Mapping[Key, int]]) -> Partial:
    total: Partial = {}
    for partial in partials:
        merge_into(total, partial)
    return total


_BY_CHANNEL: Final = frozenset({
    FIRST_REPLY, LATENCY_BUCKET, LATENCY_SUM_MS, SPAM, COHORT_STARTED, COHORT_REPLY,
    COHORT_LATENCY_SUM_MS,
})
_INMAIL_ONLY: Final = frozenset({ANSWER, INMAIL_SENT, INMAIL_RESPONSE})


def segment_of(key: Key) -> str:
    """The owner segment of a counter: its channel if it has one, else ``all``."""
    metric = key[0]
    if metric == SENT or metric == STARTED:
        channel = key[2]
    elif metric in _BY_CHANNEL:
        channel = key[1]
    elif metric in _INMAIL_ONLY:
        return "inmail"
    else:
        return GLOBAL_SEGMENT
    return channel if channel in CHANNELS else GLOBAL_SEGMENT


def split_by_segment(partial: Mapping[Key, int]) -> dict[str, Partial]:
    out: dict[str, Partial] = {}
    for key, value in partial.items():
        out.setdefault(segment_of(key), {})[key] = value
    return out


def encode(partial: Mapping[Key, int]) -> dict[str, int]:
    """JSON-friendly form: keys joined with '|' (label values never contain '|')."""
    return {"|".join(key): value for key, value in partial.items()}


def decode(data: Mapping[str, int]) -> Partial:
    return {tuple(key.split("|")): value for key, value in data.items()}
