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
    ANSWERS,
    CHANNELS,
    CONTENT_TYPES,
    ENTRY_POINTS,
    PLATFORMS,
    SENDER_TYPES,
    SPAM_REASONS,
)
from streams.partials import LATENCY_BOUNDS_SECONDS

SampleKey = tuple[str, frozenset[tuple[str, str]]]
# The metric contract's names at each resolution: messaging_daily_messages_sent, ...
PREFIX = {"minute": "", "hour": "hourly_", "day": "daily_"}
DAY = 86_400


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
            elif e["type"] == "inmail_answered":
                t[("answers", e["answer"])] += 1
    return tallies


def samples(
    t: dict[Any, Any], window_end: float, resolution: str = "minute",
    trailing: dict[int, set[str]] | None = None, every_series: bool = False,
) -> dict[SampleKey, float]:
    """The samples /metrics shows for one window's tallies (minute, hour or day). A day
    also has the trailing actives: ``trailing`` maps days (7, 28) to the senders of the
    days that end with this one. ``every_series``: as a ``messaging.metrics`` record has
    them, the spam reports of an unknown channel included while zero."""
    out: dict[SampleKey, float] = {}
    prefix = PREFIX[resolution]

    def put(name: str, value: float, **labels: str) -> None:
        if not name.startswith(("messaging_weekly_", "messaging_monthly_")):
            name = name.replace("messaging_", "messaging_" + prefix, 1)
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
    for a in ANSWERS:
        put("messaging_inmail_answers", t.get(("answers", a), 0), answer=a)
    for r in SPAM_REASONS:
        if t.get(("spam", "unknown", r)) or every_series:
            put("messaging_spam_reports", t.get(("spam", "unknown", r), 0), channel="unknown",
                reason=r)
    # a distinct-count sketch is not exact: the expected value is the CPC estimate of
    # the window's exact sender set, which must not depend on how batches grouped it
    senders = t.get("senders", set())
    put("messaging_active_senders", _estimate(senders))
    for days, name in ((7, "messaging_weekly_active_senders"),
                       (28, "messaging_monthly_active_senders")):
        if trailing is not None:
            put(name, _estimate(trailing[days]))
    put("messaging_window_end_timestamp_seconds", window_end)
    return out


def _estimate(senders: set[str]) -> int:
    return distinct.estimate(distinct.union([distinct.sketch_of(senders)])) if senders else 0


def trailing_senders(days: dict[int, dict[str, Any]], day: int) -> dict[int, set[str]]:
    """Senders of the 7 and 28 days that end with ``day`` (day tallies by start)."""
    return {
        n: set().union(*(t.get("senders", set()) for start, t in days.items()
                         if day - (n - 1) * DAY <= start <= day))
        for n in (7, 28)
    }


def recount_flags(
    partitions: dict[int, list[dict[str, Any]]], window: int, *, velocity: int, reports: int,
    inmail_min: int, inmail_rate: float, horizon: int, bucket: int,
    response_horizon: float = 30 * DAY,
) -> set[tuple[str, str, int]]:
    """``(rule, sender, window start)`` for every flag the risk rules should raise. An
    InMail response (a reply, or accepted or declined, within ``response_horizon``)
    counts for its InMail's send bucket once the window it came in has closed."""
    sent: dict[tuple[int, str], int] = defaultdict(int)
    reported: dict[tuple[int, str], int] = defaultdict(int)
    inmails: dict[tuple[int, str], int] = defaultdict(int)
    responses: dict[tuple[int, str, int], int] = defaultdict(int)  # window, sender, send bucket
    for events in partitions.values():
        conversations: dict[str, dict[str, Any]] = {}
        for e in events:
            w = math.floor(e["ts"] / window) * window
            conv = conversations.get(e["conversation_id"])
            responded = False
            if e["type"] == "message_sent":
                sent[(w, e["sender_id"])] += 1
                if e["first_in_conversation"]:
                    if e["channel"] == "inmail" and e["sender_type"] == "recruiter":
                        inmails[(w, e["sender_id"])] += 1
                    if conv is None:
                        conversations[e["conversation_id"]] = {
                            "from": e["sender_id"], "to": e["recipient_id"], "ts": e["ts"],
                            "recruiter_inmail": e["channel"] == "inmail"
                            and e["sender_type"] == "recruiter", "responded": False,
                        }
                elif conv and e["sender_id"] == conv["to"]:
                    responded = True
            elif e["type"] == "inmail_answered":
                responded = bool(conv) and e["responder_id"] == conv["to"]
            elif e["type"] == "spam_reported":
                reported[(w, e["reported_id"])] += 1
            if responded and not conv["responded"]:
                conv["responded"] = True
                if conv["recruiter_inmail"] and e["ts"] - conv["ts"] <= response_horizon:
                    send_bucket = math.floor(conv["ts"] / bucket) * bucket
                    responses[(w, conv["from"], send_bucket)] += 1
    flags = {("velocity", s, w) for (w, s), n in sent.items() if n >= velocity}
    flags |= {("spam_reports", s, w) for (w, s), n in reported.items() if n >= reports}
    for (w, sender) in inmails:
        oldest = w + window - horizon  # buckets ending at or before this are forgotten

        def in_horizon(b: int, oldest: int = oldest) -> bool:
            return b + bucket > oldest

        total = sum(n for (x, s), n in inmails.items()
                    if s == sender and x <= w and in_horizon(math.floor(x / bucket) * bucket))
        answered = sum(n for (x, s, b), n in responses.items()
                       if s == sender and x <= w and in_horizon(b))
        if total >= inmail_min and answered / total < inmail_rate:
            flags.add(("inmail_response", sender, w))
    return flags


# --- cohorts ---------------------------------------------------------------------------
HORIZONS = {"1h": 3600, "24h": DAY, "7d": 7 * DAY}  # the contract's reply horizons


def recount_cohorts(
    partitions: dict[int, list[dict[str, Any]]], response_horizon: float = 30 * DAY,
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """Reply cohorts by the hour of the conversation's start (started, and first-reply
    latencies in ms, by channel) and InMail cohorts by the day of the send (sent, and
    first responses by kind, by sender type), from each partition in offset order."""
    hours: dict[int, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    days: dict[int, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    for events in partitions.values():
        conversations: dict[str, dict[str, Any]] = {}
        for e in events:
            conv = conversations.get(e["conversation_id"])
            response = None
            if e["type"] == "message_sent":
                if e["first_in_conversation"]:
                    # a cohort's size: its hour's conversations started (first messages)
                    hour = math.floor(e["ts"] / 3600) * 3600
                    hours[hour][("started", e["channel"])] += 1
                    if conv is None:
                        conv = conversations[e["conversation_id"]] = {
                            "ts": e["ts"], "to": e["recipient_id"], "channel": e["channel"],
                            "type": e["sender_type"], "replied": False, "responded": False,
                        }
                        if e["channel"] == "inmail":
                            day = math.floor(e["ts"] / DAY) * DAY
                            days[day][("sent", e["sender_type"])] += 1
                elif conv and e["sender_id"] == conv["to"]:
                    if not conv["replied"]:
                        conv["replied"] = True
                        ms = max(0, round((e["ts"] - conv["ts"]) * 1000))
                        hour = math.floor(conv["ts"] / 3600) * 3600
                        hours[hour].setdefault(("latencies", conv["channel"]), []).append(ms)
                    response = "replied"
            elif e["type"] == "inmail_answered" and conv and e["responder_id"] == conv["to"]:
                response = e["answer"]
            if (response and conv["channel"] == "inmail" and not conv["responded"]):
                conv["responded"] = True
                if e["ts"] - conv["ts"] <= response_horizon:
                    day = math.floor(conv["ts"] / DAY) * DAY
                    days[day][("responses", conv["type"], response)] += 1
    return hours, days


def cohort_samples(
    t: dict[Any, Any], resolution: str, horizon: str, start: int
) -> dict[SampleKey, float]:
    """The final samples of one reply cohort for one horizon (summed over owners)."""
    out: dict[SampleKey, float] = {}

    def put(name: str, value: float, **labels: str) -> None:
        out[(name, frozenset(labels.items()))] = value

    limit = HORIZONS[horizon] * 1000
    head = {"resolution": resolution, "horizon": horizon}
    put("messaging_final_cohort_start_timestamp_seconds", start, **head)
    for c in CHANNELS:
        put("messaging_final_cohort_conversations", t.get(("started", c), 0), **head, channel=c)
        within = [ms for ms in t.get(("latencies", c), []) if ms <= limit]
        put("messaging_final_cohort_first_replies", len(within), **head, channel=c)
        name = "messaging_final_cohort_reply_latency_seconds"
        for bound in LATENCY_BOUNDS_SECONDS:
            put(f"{name}_bucket", sum(1 for ms in within if ms <= bound * 1000), **head,
                channel=c, le=str(float(bound)))
        put(f"{name}_bucket", len(within), **head, channel=c, le="+Inf")
        put(f"{name}_gcount", len(within), **head, channel=c)
        put(f"{name}_gsum", sum(within) / 1000, **head, channel=c)
    return out


def inmail_cohort_samples(t: dict[Any, Any], start: int) -> dict[SampleKey, float]:
    out: dict[SampleKey, float] = {}
    for s in SENDER_TYPES:
        out[("messaging_final_inmail_cohort_sent", frozenset({("sender_type", s)}))] = (
            t.get(("sent", s), 0)
        )
        for r in ("replied", "accepted", "declined"):
            labels = frozenset({("sender_type", s), ("response", r)})
            out[("messaging_final_inmail_cohort_responses", labels)] = t.get(("responses", s, r), 0)
    out[("messaging_final_inmail_cohort_start_timestamp_seconds", frozenset())] = start
    return out


def merge_hours(hours: dict[int, dict[str, Any]], day: int) -> dict[str, Any]:
    """A day's reply cohort: its hours' tallies together."""
    total: dict[Any, Any] = defaultdict(int)
    for start, t in hours.items():
        if day <= start < day + DAY:
            for key, value in t.items():
                if key[0] == "latencies":
                    total.setdefault(key, []).extend(value)  # type: ignore[attr-defined]
                else:
                    total[key] += value
    return total
