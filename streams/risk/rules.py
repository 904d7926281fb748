"""Risk rules over per-sender activity: pure state and rules, no Kafka.

One :class:`RiskState` per sender-activity partition (senders are partitioned by id, so
each sender has exactly one owner). It adds up each sender's activity per event-time
window and, when the watermark closes a window, applies the rules:

- ``velocity``: at least ``velocity_messages`` messages sent in the window;
- ``spam_reports``: at least ``spam_reports`` spam reports received in the window;
- ``inmail_response``: a recruiter who sent InMail in the window and whose InMails sent
  over the horizon (``inmail_horizon`` seconds, kept in buckets) number at least
  ``inmail_min_sent`` with a response rate below ``inmail_min_response_rate``: LinkedIn's
  InMail response rate, InMails answered (a reply, or accepted or declined) over
  InMails sent. A response counts in the bucket of its InMail's send, once the window
  it came in closes, so live and replay agree.

Each flag is emitted once per rule, sender and window, with its evidence; the window's
counts of flagged senders by rule feed the ``messaging_flagged_senders`` gauge.

The open windows are in memory; recruiters' InMail history is an
:class:`~streams.risk.inmail.InmailHistory`, in memory (the replay, tests) or on disk
(the stage), judged the same either way. When the stage asks (:attr:`RiskState.increments`)
the state also keeps what the records applied added to the open windows, and which
windows closed, for its per-batch changelog records (:mod:`streams.risk.changelog`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from operator import attrgetter
from typing import Any

import orjson

from streams.catalogue import RISK_RULES
from streams.ingest.conversations import INMAILS_SENT, REPORTS_RECEIVED, SENT_MESSAGES
from streams.partials import FLAGGED, Partial
from streams.risk.inmail import InmailHistory, MemoryInmail
from streams.settings import Settings
from streams.windows import GlobalWatermark

RULES = RISK_RULES
RECENT_WINDOWS = 5


@dataclass(frozen=True, slots=True)
class RiskRules:
    velocity_messages: int = 40
    spam_reports: int = 3
    inmail_min_sent: int = 100
    inmail_min_response_rate: float = 0.13
    inmail_horizon: int = 14 * 86_400
    inmail_bucket: int = 86_400

    @classmethod
    def from_settings(cls, settings: Settings) -> RiskRules:
        return cls(
            settings.risk_velocity_messages, settings.risk_spam_reports,
            settings.risk_inmail_min_sent, settings.risk_inmail_min_response_rate,
            settings.risk_inmail_horizon_seconds, settings.risk_inmail_bucket_seconds,
        )


@dataclass(frozen=True, slots=True)
class Flag:
    rule: str
    sender_id: str
    window_start: int
    window_end: int
    evidence: dict[str, Any]

    def record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Increments:
    """What the records applied since the stage last looked added to the open windows,
    and which windows they closed: what the stage's changelog records carry (with the
    senders whose InMail history changed, :attr:`InmailHistory.changed`)."""

    windows: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    responses: dict[int, dict[str, dict[int, int]]] = field(default_factory=dict)
    closed: list[int] = field(default_factory=list)


@dataclass(slots=True)
class RiskState:
    owner: int
    window_size: int
    rules: RiskRules
    windows: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    # recruiters' InMail history (in memory unless the stage gives one on disk)
    history: InmailHistory = field(default=None)  # type: ignore[assignment]
    # recruiter InMail responses by the window they came in, sender, send bucket
    responses: dict[int, dict[str, dict[int, int]]] = field(default_factory=dict)
    watermark: GlobalWatermark = field(init=False)
    recent: dict[int, Partial] = field(default_factory=dict)
    late_events: int = 0
    # per ingest partition, the last batch (its offset) whose activity is in the state
    applied: dict[int, int] = field(default_factory=dict)
    increments: Increments | None = None  # kept when the stage asks (its changelog)

    def __post_init__(self) -> None:
        self.watermark = GlobalWatermark(self.window_size)
        if self.history is None:
            self.history = InmailHistory(MemoryInmail(), self.rules.inmail_bucket)

    @property
    def inmail_oldest(self) -> int | None:
        """The horizon of the last window closed (buckets ending at or before it are
        forgotten): ``recent`` holds the newest closed windows."""
        if not self.recent:
            return None
        return max(self.recent) + self.window_size - self.rules.inmail_horizon

    def apply(self, record: dict[str, Any]) -> list[Flag]:
        if record["kind"] == "activity":
            # An ingest batch's activity reaches a partition once per batch, in offset
            # order per source. One already in the state is a redelivery: after a crash
            # and a broker restart the group's committed offsets can lag a transaction
            # that committed (aiokafka's OffsetFetch cannot ask for stable offsets), while
            # the changelog already holds what it added. Counted twice, it raised flags.
            source, offset = record.get("source"), record.get("offset")
            if source is not None and offset is not None:
                if offset <= self.applied.get(source, -1):
                    return []
                self.applied[source] = offset
            self._add_activity(record["windows"])
            self._add_responses(record.get("inmail_responses", {}))
            return []
        value = self.watermark.apply_mark(record)
        flags: list[Flag] = []
        closing = {s for s in (*self.windows, *self.responses) if s + self.window_size <= value}
        for start in sorted(closing):
            flags.extend(self._close(start))
        return flags

    def _add_responses(self, windows: dict[str, dict[str, dict[str, int]]]) -> None:
        increments = self.increments
        for start_text, senders in windows.items():
            start = int(start_text)
            if start + self.window_size <= self.watermark.value:
                continue  # closed already: the events are counted late with the window's
            window = self.responses.setdefault(start, {})
            added = None if increments is None else increments.responses.setdefault(start, {})
            for sender, buckets in senders.items():
                add_responses(window, sender, buckets)
                if added is not None:
                    add_responses(added, sender, buckets)

    def _add_activity(self, windows: dict[str, dict[str, list[int]]]) -> None:
        increments = self.increments
        for start_text, senders in windows.items():
            start = int(start_text)
            if start + self.window_size <= self.watermark.value:
                # closed already (a source went idle, then resumed): counted, not judged
                self.late_events += sum(c[SENT_MESSAGES] for c in senders.values())
                continue
            window = self.windows.setdefault(start, {})
            added = None if increments is None else increments.windows.setdefault(start, {})
            for sender, counts in senders.items():
                add_counts(window, sender, counts)
                if added is not None:
                    add_counts(added, sender, counts)

    def _close(self, start: int) -> list[Flag]:
        """Judge every sender of a closing window. Flags come out in a fixed order
        (velocity and spam-report flags by sender, then InMail flags by sender) without
        sorting the window's tens of thousands of senders: only the flags are sorted."""
        rules, end = self.rules, start + self.window_size
        senders = self.windows.pop(start, {})
        if self.increments is not None:
            self.increments.windows.pop(start, None)
            self.increments.responses.pop(start, None)
            self.increments.closed.append(start)
        # the window's InMail history changes by sender: InMails sent, responses by bucket
        changes: dict[str, tuple[int, dict[int, int]]] = {
            sender: (0, buckets) for sender, buckets in self.responses.pop(start, {}).items()
        }
        flags: list[Flag] = []
        inmail_senders = []
        velocity, spam_reports = rules.velocity_messages, rules.spam_reports
        for sender, counts in senders.items():
            if counts[SENT_MESSAGES] >= velocity:
                flags.append(Flag("velocity", sender, start, end,
                                  {"messages": counts[SENT_MESSAGES]}))
            if counts[REPORTS_RECEIVED] >= spam_reports:
                flags.append(Flag("spam_reports", sender, start, end,
                                  {"reports_received": counts[REPORTS_RECEIVED]}))
            if counts[INMAILS_SENT]:
                changes[sender] = (counts[INMAILS_SENT], changes.get(sender, (0, {}))[1])
                inmail_senders.append(sender)
        flags.sort(key=attrgetter("sender_id"))  # stable: a sender's velocity flag stays first
        bucket = math.floor(start / rules.inmail_bucket) * rules.inmail_bucket
        oldest = end - rules.inmail_horizon
        history = self.history
        for sender, (sent, responses) in changes.items():
            history.add(sender, bucket, sent, responses, oldest)
        history.expire(oldest)
        for sender in sorted(inmail_senders):
            flag = self._judge_inmail(sender, start, end, oldest)
            if flag is not None:
                flags.append(flag)
        tally: Partial = {(FLAGGED, rule): 0 for rule in RULES}
        for flag in flags:
            tally[(FLAGGED, flag.rule)] += 1
        self.recent[start] = tally
        for old in sorted(self.recent)[:-RECENT_WINDOWS]:
            del self.recent[old]
        return flags

    def _judge_inmail(self, sender: str, start: int, end: int, oldest: int) -> Flag | None:
        rules = self.rules
        sent, responses = self.history.totals(sender, oldest)
        if sent < rules.inmail_min_sent or responses / sent >= rules.inmail_min_response_rate:
            return None
        return Flag("inmail_response", sender, start, end, {
            "inmails": sent, "responses": responses,
            "response_rate": round(responses / sent, 4), "horizon_seconds": rules.inmail_horizon,
        })

    # --- the whole state as one document -----------------------------------------------
    def dumps(self) -> bytes:
        """The whole state in the shape of the snapshot record earlier versions wrote for
        every batch (senders and buckets sorted): for comparisons and tests."""
        return orjson.dumps({
            "windows": {str(s): senders for s, senders in sorted(self.windows.items())},
            "responses": {
                str(s): {sender: {str(b): n for b, n in buckets.items()}
                         for sender, buckets in senders.items()}
                for s, senders in sorted(self.responses.items())
            },
            "inmail": {
                sender: {str(b): v for b, v in sorted(buckets.items())}
                for sender, buckets in sorted(self.history.items())
            },
            **self.header(),
        })

    def header(self) -> dict[str, Any]:
        """The watermark and tallies: small, replaced as a whole."""
        return {
            "watermark": self.watermark.to_json(),
            "recent": {str(s): {k[1]: v for k, v in p.items()} for s, p in self.recent.items()},
            "late_events": self.late_events,
            "applied": {str(source): offset for source, offset in self.applied.items()},
        }

    def restore_header(self, data: dict[str, Any]) -> None:
        self.watermark = GlobalWatermark.from_json(self.window_size, data["watermark"])
        self.recent = {
            int(s): {(FLAGGED, rule): v for rule, v in p.items()}
            for s, p in data["recent"].items()
        }
        self.late_events = data["late_events"]
        self.applied = {int(source): offset for source, offset in data.get("applied", {}).items()}

    def restore(self, raw: bytes) -> None:
        """A snapshot record as earlier versions wrote (and :meth:`dumps` writes): the
        whole state. InMail histories are written into :attr:`history`, which keeps
        senders the snapshot lacks (a history read back before it: none in practice)."""
        data = orjson.loads(raw)
        self.windows = {int(s): senders for s, senders in data["windows"].items()}
        self.responses = {
            int(s): {sender: {int(b): n for b, n in buckets.items()}
                     for sender, buckets in senders.items()}
            for s, senders in data.get("responses", {}).items()
        }
        for sender, buckets in data["inmail"].items():
            if buckets:
                self.history.restore(sender, {int(b): v for b, v in buckets.items()})
        self.restore_header(data)


def add_counts(window: dict[str, list[int]], sender: str, counts: list[int]) -> None:
    total = window.get(sender)
    if total is None:
        window[sender] = list(counts)
    else:
        for i, value in enumerate(counts):
            total[i] += value


def add_responses(
    window: dict[str, dict[int, int]], sender: str, buckets: dict[Any, int]
) -> None:
    mine = window.setdefault(sender, {})
    for bucket, count in buckets.items():
        mine[int(bucket)] = mine.get(int(bucket), 0) + count
