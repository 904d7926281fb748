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
class RiskState:
    owner: int
    window_size: int
    rules: RiskRules
    windows: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    inmail: dict[str, dict[int, list[int]]] = field(default_factory=dict)  # sender, bucket
    # recruiter InMail responses by the window they came in, sender, send bucket
    responses: dict[int, dict[str, dict[int, int]]] = field(default_factory=dict)
    watermark: GlobalWatermark = field(init=False)
    recent: dict[int, Partial] = field(default_factory=dict)
    late_events: int = 0

    def __post_init__(self) -> None:
        self.watermark = GlobalWatermark(self.window_size)

    def apply(self, record: dict[str, Any]) -> list[Flag]:
        if record["kind"] == "activity":
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
        for start_text, senders in windows.items():
            start = int(start_text)
            if start + self.window_size <= self.watermark.value:
                continue  # closed already: the events are counted late with the window's
            window = self.responses.setdefault(start, {})
            for sender, buckets in senders.items():
                mine = window.setdefault(sender, {})
                for bucket, count in buckets.items():
                    mine[int(bucket)] = mine.get(int(bucket), 0) + count

    def _add_activity(self, windows: dict[str, dict[str, list[int]]]) -> None:
        for start_text, senders in windows.items():
            start = int(start_text)
            if start + self.window_size <= self.watermark.value:
                # closed already (a source went idle, then resumed): counted, not judged
                self.late_events += sum(c[SENT_MESSAGES] for c in senders.values())
                continue
            window = self.windows.setdefault(start, {})
            for sender, counts in senders.items():
                total = window.get(sender)
                if total is None:
                    window[sender] = list(counts)
                else:
                    for i, value in enumerate(counts):
                        total[i] += value

    def _close(self, start: int) -> list[Flag]:
        """Judge every sender of a closing window. Flags come out in a fixed order
        (velocity and spam-report flags by sender, then InMail flags by sender) without
        sorting the window's tens of thousands of senders: only the flags are sorted."""
        rules, end = self.rules, start + self.window_size
        senders = self.windows.pop(start, {})
        for sender, buckets in self.responses.pop(start, {}).items():
            mine = self.inmail.setdefault(sender, {})
            for bucket, count in buckets.items():
                mine.setdefault(bucket, [0, 0])[1] += count
        flags: list[Flag] = []
        inmail_senders = []
        bucket = math.floor(start / rules.inmail_bucket) * rules.inmail_bucket
        velocity, spam_reports = rules.velocity_messages, rules.spam_reports
        for sender, counts in senders.items():
            if counts[SENT_MESSAGES] >= velocity:
                flags.append(Flag("velocity", sender, start, end,
                                  {"messages": counts[SENT_MESSAGES]}))
            if counts[REPORTS_RECEIVED] >= spam_reports:
                flags.append(Flag("spam_reports", sender, start, end,
                                  {"reports_received": counts[REPORTS_RECEIVED]}))
            if counts[INMAILS_SENT]:
                buckets = self.inmail.setdefault(sender, {})
                buckets.setdefault(bucket, [0, 0])[0] += counts[INMAILS_SENT]
                inmail_senders.append(sender)
        flags.sort(key=attrgetter("sender_id"))  # stable: a sender's velocity flag stays first
        self._expire_inmail(end)
        for sender in sorted(inmail_senders):
            flag = self._judge_inmail(sender, start, end)
            if flag is not None:
                flags.append(flag)
        tally: Partial = {(FLAGGED, rule): 0 for rule in RULES}
        for flag in flags:
            tally[(FLAGGED, flag.rule)] += 1
        self.recent[start] = tally
        for old in sorted(self.recent)[:-RECENT_WINDOWS]:
            del self.recent[old]
        return flags

    def _expire_inmail(self, end: int) -> None:
        oldest = end - self.rules.inmail_horizon
        for sender in list(self.inmail):
            buckets = self.inmail[sender]
            for bucket in [b for b in buckets if b + self.rules.inmail_bucket <= oldest]:
                del buckets[bucket]
            if not buckets:
                del self.inmail[sender]

    def _judge_inmail(self, sender: str, start: int, end: int) -> Flag | None:
        rules = self.rules
        buckets = self.inmail.get(sender, {})
        sent = sum(b[0] for b in buckets.values())
        responses = sum(b[1] for b in buckets.values())
        if sent < rules.inmail_min_sent or responses / sent >= rules.inmail_min_response_rate:
            return None
        return Flag("inmail_response", sender, start, end, {
            "inmails": sent, "responses": responses,
            "response_rate": round(responses / sent, 4), "horizon_seconds": rules.inmail_horizon,
        })

    # --- persistence: one snapshot per partition ----------------------------------------
    def dumps(self) -> bytes:
        return orjson.dumps({
            "windows": {str(s): senders for s, senders in self.windows.items()},
            "responses": {
                str(s): {sender: {str(b): n for b, n in buckets.items()}
                         for sender, buckets in senders.items()}
                for s, senders in self.responses.items()
            },
            "inmail": {
                sender: {str(b): v for b, v in buckets.items()}
                for sender, buckets in self.inmail.items()
            },
            "watermark": self.watermark.to_json(),
            "recent": {str(s): {k[1]: v for k, v in p.items()} for s, p in self.recent.items()},
            "late_events": self.late_events,
        })

    def restore(self, raw: bytes) -> None:
        data = orjson.loads(raw)
        self.windows = {int(s): senders for s, senders in data["windows"].items()}
        self.responses = {
            int(s): {sender: {int(b): n for b, n in buckets.items()}
                     for sender, buckets in senders.items()}
            for s, senders in data.get("responses", {}).items()
        }
        self.inmail = {
            sender: {int(b): v for b, v in buckets.items()}
            for sender, buckets in data["inmail"].items()
        }
        self.watermark = GlobalWatermark.from_json(self.window_size, data["watermark"])
        self.recent = {
            int(s): {(FLAGGED, rule): v for rule, v in p.items()}
            for s, p in data["recent"].items()
        }
        self.late_events = data["late_events"]
