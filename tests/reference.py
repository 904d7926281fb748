"""An independent recount of the window metrics, for tests to compare against.

Deliberately written apart from ``streams``' counting code: it walks the events of
each partition in offset order with plain dictionaries and renders the samples the
way the metric contract describes them. Only the contract's constants are shared.
"""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import product
from typing import Any

from streams import distinct
from streams.events import (
    CHANNELS,
    CONTENT_TYPES,
    ENTRY_POINTS,
    PLATFORMS,
    SENDER_TYPES,
    SPAM_REASONS,
)
from streams.partials import LATENCY_BOUNDS_SECONDS

SampleKey = tuple[str, frozenset[tuple[str, str]]]


def recount(partitions: dict[int, list[dict[str, Any]]], window: int) -> dict[int, dict[str, Any]]:
    """Window start -> raw tallies, from each partition's valid events in offset order."""
    tallies: dict[int, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    for events in partitions.values():
        conversations: dict[str, dict[str, Any]] = {}
        for e in events:
            start = math.floor(e["ts"] / window) * window
            t = tallies[start]
            conv = conversations.get(e["conversation_id"])
            if e["type"] == "message_sent":
                t.setdefault("senders", set()).add(e["sender_id"])
                t[("sent", e["platform"], e["channel"], e["sender_type"], e["content_type"])] += 1
                if e["first_in_conversation"]:
                    t[("started", e["platform"], e["channel"], e["entry_point"])] += 1
                    if conv is None:
                        conversations[e["conversation_id"]] = {
                            "ts": e["ts"], "to": e["recipient_id"], "channel": e["channel"],
                            "replied": False,
                        }
                elif conv and not conv["replied"] and e["sender_id"] == conv["to"]:
                    conv["replied"] = True
                    ms = max(0, round((e["ts"] - conv["ts"]) * 1000))
                    t[("replies", conv["channel"])] += 1
                    t[("latency_ms", conv["channel"])] += ms
                    t[("latencies", conv["channel"])] = t.get(("latencies", conv["channel"]), ())
                    t[("latencies", conv["channel"])] += (ms,)
            elif e["type"] == "message_read":
                t[("read", e["platform"])] += 1
            elif e["type"] == "spam_reported":
                t[("spam", conv["channel"] if conv else "unknown", e["reason"])] += 1
            elif e["type"] == "member_blocked":
                t[("blocks", e["platform"])] += 1
    return tallies


def samples(t: dict[Any, Any], window_end: float) -> dict[SampleKey, float]:
    """The samples /metrics shows for one window's tallies."""
    out: dict[SampleKey, float] = {}

    def put(name: str, value: float, **labels: str) -> None:
        out[(name, frozenset(labels.items()))] = value

    for p, c, s, ct in product(PLATFORMS, CHANNELS, SENDER_TYPES, CONTENT_TYPES):
        put("messaging_messages_sent", t.get(("sent", p, c, s, ct), 0),
            platform=p, channel=c, sender_type=s, content_type=ct)
    for p, c, ep in product(PLATFORMS, CHANNELS, ENTRY_POINTS):
        put("messaging_conversations_started", t.get(("started", p, c, ep), 0),
            platform=p, channel=c, entry_point=ep)
    for c in CHANNELS:
        put("messaging_first_replies", t.get(("replies", c), 0), channel=c)
        latencies = t.get(("latencies", c), ())
        for bound in LATENCY_BOUNDS_SECONDS:
            put("messaging_reply_latency_seconds_bucket",
                sum(1 for ms in latencies if ms <= bound * 1000), channel=c, le=str(float(bound)))
        put("messaging_reply_latency_seconds_bucket", len(latencies), channel=c, le="+Inf")
        put("messaging_reply_latency_seconds_gcount", len(latencies), channel=c)
        put("messaging_reply_latency_seconds_gsum", t.get(("latency_ms", c), 0) / 1000, channel=c)
    for p in PLATFORMS:
        put("messaging_messages_read", t.get(("read", p), 0), platform=p)
        put("messaging_blocks", t.get(("blocks", p), 0), platform=p)
    for c, r in product(CHANNELS, SPAM_REASONS):
        put("messaging_spam_reports", t.get(("spam", c, r), 0), channel=c, reason=r)
    for r in SPAM_REASONS:
        if t.get(("spam", "unknown", r)):
            put("messaging_spam_reports", t[("spam", "unknown", r)], channel="unknown", reason=r)
    # a distinct-count sketch is not exact: the expected value is the CPC estimate of
    # the window's exact sender set, which must not depend on how batches grouped it
    senders = t.get("senders", set())
    put("messaging_active_senders",
        distinct.estimate(distinct.union([distinct.sketch_of(senders)])) if senders else 0)
    put("messaging_window_end_timestamp_seconds", window_end)
    return out


def recount_flags(
    partitions: dict[int, list[dict[str, Any]]], window: int, *, velocity: int, reports: int,
    inmail_min: int, inmail_rate: float, horizon: int, bucket: int,
) -> set[tuple[str, str, int]]:
    """``(rule, sender, window start)`` for every flag the risk rules should raise."""
    sent: dict[tuple[int, str], int] = defaultdict(int)
    reported: dict[tuple[int, str], int] = defaultdict(int)
    inmails: dict[tuple[int, str], int] = defaultdict(int)
    inmail_replies: dict[tuple[int, str], int] = defaultdict(int)
    for events in partitions.values():
        conversations: dict[str, dict[str, Any]] = {}
        for e in events:
            w = math.floor(e["ts"] / window) * window
            conv = conversations.get(e["conversation_id"])
            if e["type"] == "message_sent":
                sent[(w, e["sender_id"])] += 1
                if e["first_in_conversation"]:
                    if e["channel"] == "inmail" and e["sender_type"] == "recruiter":
                        inmails[(w, e["sender_id"])] += 1
                    if conv is None:
                        conversations[e["conversation_id"]] = {
                            "from": e["sender_id"], "to": e["recipient_id"],
                            "recruiter_inmail": e["channel"] == "inmail"
                            and e["sender_type"] == "recruiter", "replied": False,
                        }
                elif conv and not conv["replied"] and e["sender_id"] == conv["to"]:
                    conv["replied"] = True
                    if conv["recruiter_inmail"]:
                        inmail_replies[(w, conv["from"])] += 1
            elif e["type"] == "spam_reported":
                reported[(w, e["reported_id"])] += 1
    flags = {("velocity", s, w) for (w, s), n in sent.items() if n >= velocity}
    flags |= {("spam_reports", s, w) for (w, s), n in reported.items() if n >= reports}
    for (w, sender) in inmails:
        oldest = w + window - horizon  # buckets ending at or before this are forgotten

        def in_horizon(x: int, oldest: int = oldest, w: int = w) -> bool:
            b = math.floor(x / bucket) * bucket
            return b + bucket > oldest and x <= w

        total = sum(n for (x, s), n in inmails.items() if s == sender and in_horizon(x))
        replies = sum(n for (x, s), n in inmail_replies.items() if s == sender and in_horizon(x))
        if total >= inmail_min and replies / total < inmail_rate:
            flags.add(("inmail_response", sender, w))
    return flags
