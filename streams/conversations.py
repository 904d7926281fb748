"""Per-input-partition ingest core: conversation state, first replies and batch partials.

Pure code, no Kafka. The ingest stage feeds it the decoded, valid events of one input
partition in offset order; it keeps each conversation's start (time, starter,
recipient, channel, replied) to tell which message is the first reply and how long it
took, and counts every accepted event into per-window partials.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from streams.partials import (
    BLOCK,
    EVENTS,
    FIRST_REPLY,
    LATENCY_BUCKET,
    LATENCY_SUM_MS,
    READ,
    SENT,
    SPAM,
    STARTED,
    UNKNOWN_CHANNEL,
    Partial,
    latency_bucket,
)
from streams.windows import PartitionClock, window_start


@dataclass(slots=True)
class Conversation:
    started_at: float
    starter_id: str
    recipient_id: str
    channel: str
    starter_type: str
    replied: bool = False

    def dumps(self) -> bytes:
        return orjson.dumps([
            self.started_at, self.starter_id, self.recipient_id, self.channel,
            self.starter_type, self.replied,
        ])

    @classmethod
    def loads(cls, raw: bytes) -> Conversation:
        return cls(*orjson.loads(raw))


# Per-sender activity counters, in this order (the risk stage's input).
SENT_MESSAGES, REPORTS_RECEIVED, INMAILS_SENT, INMAIL_REPLIES = range(4)


@dataclass(slots=True)
class BatchWindows:
    """What one batch of one partition adds: counts and distinct senders per window."""

    counts: dict[int, Partial] = field(default_factory=dict)
    senders: dict[int, set[str]] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)  # conversations whose state changed
    activity: dict[int, dict[str, list[int]]] = field(default_factory=dict)  # window, sender

    def sender_counts(self, start: int, sender: str) -> list[int]:
        window = self.activity.get(start)
        if window is None:
            window = self.activity[start] = {}
        counts = window.get(sender)
        if counts is None:
            counts = window[sender] = [0, 0, 0, 0]
        return counts


@dataclass(slots=True)
class PartitionCore:
    """State and counting for one input partition."""

    window_size: int
    lateness: float
    conversations: dict[str, Conversation] = field(default_factory=dict)
    clock: PartitionClock = field(init=False)

    def __post_init__(self) -> None:
        self.clock = PartitionClock(self.lateness)

    def add(self, event: dict[str, Any], batch: BatchWindows) -> bool:
        """Apply one valid event; count it unless it is late. Returns False when late."""
        windows, touched = batch.counts, batch.touched
        ts = event["ts"]
        late = self.clock.is_late(ts, self.window_size)
        self.clock.observe(ts)
        conversation_id = event["conversation_id"]
        conversation = self.conversations.get(conversation_id)
        counts: Partial | None = None
        if not late:
            start = window_start(ts, self.window_size)
            counts = windows.get(start)
            if counts is None:
                counts = windows[start] = {}
        kind = event["type"]
        if kind == "message_sent":
            channel = event["channel"]
            if counts is not None:
                key = (SENT, event["platform"], channel, event["sender_type"], event["content_type"])
                counts[key] = counts.get(key, 0) + 1
                senders = batch.senders.get(start)
                if senders is None:
                    senders = batch.senders[start] = set()
                senders.add(event["sender_id"])
                activity = batch.sender_counts(start, event["sender_id"])
                activity[SENT_MESSAGES] += 1
            if event["first_in_conversation"]:
                if counts is not None:
                    key = (STARTED, event["platform"], channel, event["entry_point"])
                    counts[key] = counts.get(key, 0) + 1
                    if channel == "inmail" and event["sender_type"] == "recruiter":
                        activity[INMAILS_SENT] += 1
                if conversation is None:
                    self.conversations[conversation_id] = Conversation(
                        ts, event["sender_id"], event["recipient_id"], channel,
                        event["sender_type"],
                    )
                    touched.add(conversation_id)
            elif (
                conversation is not None
                and not conversation.replied
                and event["sender_id"] == conversation.recipient_id
            ):
                conversation.replied = True
                touched.add(conversation_id)
                if counts is not None:
                    latency_ms = max(0, round((ts - conversation.started_at) * 1000))
                    channel = conversation.channel
                    for key, inc in (
                        ((FIRST_REPLY, channel), 1),
                        ((LATENCY_BUCKET, channel, str(latency_bucket(latency_ms))), 1),
                        ((LATENCY_SUM_MS, channel), latency_ms),
                    ):
                        counts[key] = counts.get(key, 0) + inc
                    if channel == "inmail" and conversation.starter_type == "recruiter":
                        batch.sender_counts(start, conversation.starter_id)[INMAIL_REPLIES] += 1
        elif counts is not None:
            if kind == "message_read":
                key = (READ, event["platform"])
            elif kind == "spam_reported":
                channel = conversation.channel if conversation is not None else UNKNOWN_CHANNEL
                key = (SPAM, channel, event["reason"])
                batch.sender_counts(start, event["reported_id"])[REPORTS_RECEIVED] += 1
            else:
                key = (BLOCK, event["platform"])
            counts[key] = counts.get(key, 0) + 1
        if counts is not None:
            key = (EVENTS, kind)
            counts[key] = counts.get(key, 0) + 1
        return not late
