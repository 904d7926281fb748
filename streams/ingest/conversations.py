"""Per-input-partition ingest core: conversation state, first replies and batch partials.

Pure code, no Kafka. The ingest stage feeds it the decoded, valid events of one input
partition in offset order; it keeps each conversation's start (time, starter,
recipient, channel, replied) to tell which message is the first reply and how long it
took, and counts every accepted event into per-window partials.

Cohorts: a conversation's first reply also counts in the cohort of the conversation's
start (its hour), with its latency bucket, so that the owners can tell what share of an
hour's or a day's conversations (its conversations_started, which they already have)
got an answer within 1 h, 24 h and 7 d. An InMail's
first response (a reply, or an answer: "Yes, interested" / "No thanks") counts in the
cohort of its send day, by the sender's type; InMail conversations are remembered for
the InMail response horizon (30 days, LinkedIn's definition), longer than others.

Event ids: an event whose id was accepted within the dedup horizon is a duplicate. The
ids live in ``messaging_native.EventIds`` (Rust, ``native/src/lib.rs``): a fingerprint
and a ts per id in memory, the ids themselves in the batches' changelog records, which
the stage keeps in its store; a fingerprint's match in an earlier batch is confirmed
by reading its record back (:meth:`PartitionCore._confirm`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from math import floor

from messaging_native import CONFIRM, DUPLICATE, EventIds

from streams.events import Event, InMailAnswered, MessageSent
from streams.ingest.changelog import ids_record_holds
from streams.ingest.conversation_table import (
    Conversation,
    MemoryConversations,
    StoredConversations,
    Touched,
)
from streams.partials import (
    ANSWER,
    BLOCK,
    COHORT_LATENCY_SUM_MS,
    COHORT_REPLY,
    EVENTS,
    FIRST_REPLY,
    INMAIL_RESPONSE,
    INMAIL_SENT,
    LATENCY_BUCKET,
    LATENCY_SUM_MS,
    READ,
    SENT,
    SPAM,
    STARTED,
    UNKNOWN_CHANNEL,
    Key,
    Partial,
    latency_bucket,
)
from streams.settings import Settings
from streams.windows import PartitionClock

# Per-sender activity counters, in this order (the risk stage's input).
SENT_MESSAGES, REPORTS_RECEIVED, INMAILS_SENT = range(3)
HOUR, DAY = 3600, 86_400  # cohorts: replies by the start's hour, InMail by its day
# Events counted without their conversation: not looking it up spares a store read (a
# miss in the cache goes to disk) for two in five events.
_WITHOUT_CONVERSATION = frozenset({"message_read", "member_blocked"})


@dataclass(slots=True)
class BatchWindows:
    """What one batch of one partition adds: counts and distinct senders per window."""

    counts: dict[int, Partial] = field(default_factory=dict)
    senders: dict[int, set[str]] = field(default_factory=dict)
    touched: dict[str, Touched] = field(default_factory=dict)  # conversations it changed
    activity: dict[int, dict[str, list[int]]] = field(default_factory=dict)  # window, sender
    reply_cohorts: dict[int, Partial] = field(default_factory=dict)  # start's hour
    inmail_cohorts: dict[int, Partial] = field(default_factory=dict)  # send day
    # recruiter InMail responses, in the window of the response, by sender and the
    # risk bucket of the InMail's send: the risk rule judges sent InMails' responses
    inmail_responses: dict[int, dict[str, dict[int, int]]] = field(default_factory=dict)

    def touch(self, conversation_id: str, conversation: Conversation) -> None:
        """A conversation the batch changed, once the event is done changing it: taken
        now, while the conversation is in the CPU's caches. At the batch's end, some
        10,000 conversations scattered through memory cost 0.8 µs each to encode (we
        measured), 0.13 µs now, and a conversation changes about once per two events."""
        self.touched[conversation_id] = (
            conversation.dumps(), conversation.started_at,
            conversation.channel == "inmail",
        )

    def sender_counts(self, start: int, sender: str) -> list[int]:
        window = self.activity.get(start)
        if window is None:
            window = self.activity[start] = {}
        counts = window.get(sender)
        if counts is None:
            counts = window[sender] = [0, 0, 0]
        return counts

    def cohort(self, cohorts: dict[int, Partial], ts: float, size: int) -> Partial:
        start = floor(ts / size) * size
        counts = cohorts.get(start)
        if counts is None:
            counts = cohorts[start] = {}
        return counts


@dataclass(slots=True)
class PartitionCore:
    """State and counting for one input partition.

    State is bounded in event time: a conversation is forgotten ``conversation_ttl``
    seconds after it started, an event id ``dedup_horizon`` seconds after its event.
    Both rules are applied when state is read (so results do not depend on where batch
    boundaries fall); :meth:`expire` then drops what the rules already ignore.
    """

    window_size: int
    lateness: float
    conversation_ttl: float = 7 * 86_400.0
    dedup_horizon: float = 3_600.0
    max_ahead: float = 86_400.0
    inmail_horizon: float = 30 * 86_400.0  # an InMail's response counts this long after
    inmail_bucket: int = 86_400  # the risk rule's InMail buckets
    conversations: MemoryConversations | StoredConversations = field(
        default_factory=MemoryConversations
    )
    # the changelog records of ids, where a fingerprint's match is confirmed (the store)
    read_record: Callable[[bytes], bytes | None] | None = None
    event_ids: EventIds = field(init=False)  # accepted within the horizon (see above)
    clock: PartitionClock = field(init=False)
    inmail_ttl: float = field(init=False)

    def __post_init__(self) -> None:
        self.clock = PartitionClock(self.lateness)
        self.event_ids = EventIds(self.dedup_horizon)
        # InMail conversations are remembered for the longer of the two
        self.inmail_ttl = max(self.conversation_ttl, self.inmail_horizon)

    def admit(self, event: Event) -> str | None:
        """Checks that need this partition's state: a rejection reason, or None; an
        admitted event's id is remembered at once (:meth:`add` always follows)."""
        ts = event.ts
        newest = self.clock.max_ts
        if ts > newest + self.max_ahead and newest != -math.inf:  # the first sets the pace
            return "timestamp_too_far_ahead"
        oldest = newest - self.dedup_horizon
        verdict = self.event_ids.admit(event.event_id, ts, oldest)
        if verdict == DUPLICATE:
            return "duplicate_event_id"
        if verdict == CONFIRM:  # a fingerprint matched one in a record: is it the id?
            return self._confirm(event.event_id, ts, oldest)
        return None

    def _confirm(self, event_id: str, ts: float, oldest: float) -> str | None:
        key = self.event_ids.record_of_id(event_id)
        assert key is not None and self.read_record is not None
        record = self.read_record(key)  # None: forgotten with its life
        if record is not None and ids_record_holds(record, event_id, oldest):
            return "duplicate_event_id"
        self.event_ids.accept(event_id, ts, oldest)
        return None

    def conversation(self, conversation_id: str) -> Conversation | None:
        """A remembered conversation (TTL not applied)."""
        return self.conversations.get(conversation_id)

    def expire(self) -> list[str]:
        """Drop conversations and event ids past their horizon; return the conversations
        dropped. InMail conversations are kept for the longer InMail horizon."""
        now = self.clock.max_ts
        dropped_conversations = self.conversations.expire(
            now - self.conversation_ttl, now - self.inmail_ttl
        )
        self.event_ids.expire(now - self.dedup_horizon)
        return dropped_conversations

    def add(self, event: Event, batch: BatchWindows) -> bool:
        """Apply one valid event; count it unless it is late. Returns False when late.

        The hot loop of the worker: about 40,000 calls per second per core, so it
        inlines the window arithmetic and the dict look-ups instead of calling helpers.
        """
        ts = event.ts
        size = self.window_size
        clock = self.clock
        start = floor(ts / size) * size  # windows.window_start
        late = start + size <= clock.max_ts - clock.lateness  # PartitionClock.is_late
        if ts > clock.max_ts:  # noqa: PLR1730 (a call to max() costs more, per event)
            clock.max_ts = ts
        clock.idle = False
        kind = event.kind
        conversation: Conversation | None = None
        if kind not in _WITHOUT_CONVERSATION:
            conversation = self.conversations.get(event.conversation_id)
            if (
                conversation is not None
                and conversation.started_at < ts - self.conversation_ttl
                and (conversation.channel != "inmail"
                     or conversation.started_at < ts - self.inmail_ttl)
            ):
                conversation = None  # past its TTL: forgotten, whether or not expire() ran
        counts: Partial | None = None
        if not late:
            counts = batch.counts.get(start)
            if counts is None:
                counts = batch.counts[start] = {}
        if kind == "message_sent":
            self._add_message(event, ts, start, conversation, counts, batch)  # type: ignore[arg-type]
        elif kind == "inmail_answered":
            self._add_answer(event, ts, start, conversation, counts, batch)  # type: ignore[arg-type]
        elif counts is not None:
            if kind == "message_read":
                key: Key = (READ, event.platform)  # type: ignore[attr-defined]
            elif kind == "spam_reported":
                channel = conversation.channel if conversation is not None else UNKNOWN_CHANNEL
                key = (SPAM, channel, event.reason)  # type: ignore[attr-defined]
                reported = event.reported_id  # type: ignore[attr-defined]
                batch.sender_counts(start, reported)[REPORTS_RECEIVED] += 1
            else:
                key = (BLOCK, event.platform)  # type: ignore[attr-defined]
            counts[key] = counts.get(key, 0) + 1
        if counts is not None:
            key = (EVENTS, kind)
            counts[key] = counts.get(key, 0) + 1
        return not late

    def _add_message(
        self, event: MessageSent, ts: float, start: int, conversation: Conversation | None,
        counts: Partial | None, batch: BatchWindows,
    ) -> None:
        channel = event.channel
        sender_id = event.sender_id
        activity: list[int] | None = None
        if counts is not None:
            key: Key = (SENT, event.platform, channel, event.sender_type, event.content_type)
            counts[key] = counts.get(key, 0) + 1
            senders = batch.senders.get(start)
            if senders is None:
                senders = batch.senders[start] = set()
            senders.add(sender_id)
            activity = batch.sender_counts(start, sender_id)
            activity[SENT_MESSAGES] += 1
        if event.first_in_conversation:
            if counts is not None:
                key = (STARTED, event.platform, channel, event.entry_point)
                counts[key] = counts.get(key, 0) + 1
                if activity is not None and channel == "inmail" and event.sender_type == "recruiter":
                    activity[INMAILS_SENT] += 1
            if conversation is None:
                conversation_id = event.conversation_id
                conversation = Conversation(
                    ts, sender_id, event.recipient_id, channel, event.sender_type,
                )
                self.conversations.add(conversation_id, conversation)
                batch.touch(conversation_id, conversation)
                # the InMail's cohort: its send day (a reply cohort's starts are its
                # hour's conversations_started: the owners take them from the hour)
                if counts is not None and channel == "inmail":
                    day = floor(ts / DAY) * DAY
                    cohort = batch.inmail_cohorts.get(day)
                    if cohort is None:
                        cohort = batch.inmail_cohorts[day] = {}
                    key = (INMAIL_SENT, event.sender_type)
                    cohort[key] = cohort.get(key, 0) + 1
        elif (
            conversation is not None
            and not conversation.replied
            and sender_id == conversation.recipient_id
        ):
            conversation.replied = True
            if counts is not None:
                latency_ms = max(0, round((ts - conversation.started_at) * 1000))
                channel = conversation.channel
                bucket = str(latency_bucket(latency_ms))
                key = (FIRST_REPLY, channel)
                counts[key] = counts.get(key, 0) + 1
                key = (LATENCY_BUCKET, channel, bucket)
                counts[key] = counts.get(key, 0) + 1
                key = (LATENCY_SUM_MS, channel)
                counts[key] = counts.get(key, 0) + latency_ms
                # the sum per bucket: a horizon's histogram (buckets up to it) is exact
                hour = floor(conversation.started_at / HOUR) * HOUR
                cohort = batch.reply_cohorts.get(hour)
                if cohort is None:
                    cohort = batch.reply_cohorts[hour] = {}
                key = (COHORT_REPLY, channel, bucket)
                cohort[key] = cohort.get(key, 0) + 1
                key = (COHORT_LATENCY_SUM_MS, channel, bucket)
                cohort[key] = cohort.get(key, 0) + latency_ms
            if conversation.channel == "inmail":
                self._responded(conversation, "replied", ts, start, counts, batch)
            batch.touch(event.conversation_id, conversation)  # after every change

    def _add_answer(
        self, event: InMailAnswered, ts: float, start: int, conversation: Conversation | None,
        counts: Partial | None, batch: BatchWindows,
    ) -> None:
        if counts is not None:
            key: Key = (ANSWER, event.answer)
            counts[key] = counts.get(key, 0) + 1
        if (
            conversation is not None
            and conversation.channel == "inmail"
            and event.responder_id == conversation.recipient_id
        ):
            self._responded(conversation, event.answer, ts, start, counts, batch)
            batch.touch(event.conversation_id, conversation)

    def _responded(
        self, conversation: Conversation, response: str, ts: float, start: int,
        counts: Partial | None, batch: BatchWindows,
    ) -> None:
        """An InMail's first response (a reply, or an answer), counted in the cohort of
        its send day if it came within the horizon; for the risk rule, a recruiter's, in
        the bucket of its send."""
        if conversation.responded:
            return
        conversation.responded = True
        if counts is None or ts - conversation.started_at > self.inmail_horizon:
            return
        cohort = batch.cohort(batch.inmail_cohorts, conversation.started_at, DAY)
        key = (INMAIL_RESPONSE, conversation.starter_type, response)
        cohort[key] = cohort.get(key, 0) + 1
        if conversation.starter_type == "recruiter":
            bucket = floor(conversation.started_at / self.inmail_bucket) * self.inmail_bucket
            window = batch.inmail_responses.setdefault(start, {})
            by_bucket = window.setdefault(conversation.starter_id, {})
            by_bucket[bucket] = by_bucket.get(bucket, 0) + 1


def new_core(settings: Settings) -> PartitionCore:
    return PartitionCore(
        settings.window_seconds, settings.allowed_lateness_seconds,
        conversation_ttl=settings.conversation_ttl_seconds,
        dedup_horizon=settings.dedup_horizon_seconds, max_ahead=settings.max_ahead_seconds,
        inmail_horizon=settings.inmail_response_horizon_seconds,
        inmail_bucket=settings.risk_inmail_bucket_seconds,
    )
