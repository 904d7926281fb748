"""Risk rules on per-sender activity: thresholds, horizon, once per window, restore."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from streams.risk.rules import RiskRules, RiskState

T0 = 1_790_000_040  # a 60 s window boundary
_OFFSETS = itertools.count()  # each record an ingest batch of its own
DAY = 86_400


def activity(
    start: int, senders: dict[str, list[int]], responses: dict[str, dict[int, int]] | None = None
) -> dict[str, Any]:
    """Counts are [messages sent, spam reports received, InMails sent]; ``responses``:
    recruiters' InMail responses in this window, by the day their InMail was sent."""
    record: dict[str, Any] = {"kind": "activity", "source": 0, "offset": next(_OFFSETS),
                              "windows": {str(start): senders}}
    if responses:
        record["inmail_responses"] = {str(start): {
            sender: {str(b): n for b, n in buckets.items()} for sender, buckets in responses.items()
        }}
    return record


def mark(watermark: float) -> dict[str, Any]:
    return {"kind": "mark", "source": 0, "sources": 1, "watermark": watermark,
            "max_ts": watermark, "idle": False}


RULES = RiskRules(velocity_messages=10, spam_reports=2, inmail_min_sent=20,
                  inmail_min_response_rate=0.13, inmail_horizon=14 * DAY, inmail_bucket=DAY)


BUCKET0 = T0 - T0 % DAY  # the day of T0: the InMails' send bucket


@pytest.mark.parametrize(
    ("counts", "responses", "rules"),
    [
        ([9, 0, 0], 0, set()),
        ([10, 0, 0], 0, {"velocity"}),
        ([0, 1, 0], 0, set()),
        ([0, 2, 0], 0, {"spam_reports"}),
        ([12, 3, 0], 0, {"velocity", "spam_reports"}),
        ([20, 0, 20], 2, {"velocity", "inmail_response"}),  # 10% < 13% over 20 InMails
        ([5, 0, 19], 0, set()),  # too few InMails to judge
        ([5, 0, 20], 3, set()),  # 15% is fine
    ],
)
def test_rules_flag_at_their_thresholds(counts: list[int], responses: int, rules: set[str]) -> None:
    state = RiskState(0, 60, RULES)
    state.apply(activity(T0, {"r-1": counts}, {"r-1": {BUCKET0: responses}} if responses else None))
    flags = state.apply(mark(T0 + 60))
    assert {f.rule for f in flags} == rules
    assert all(f.sender_id == "r-1" and (f.window_start, f.window_end) == (T0, T0 + 60)
               for f in flags)
    assert {k[1]: v for k, v in state.recent[T0].items() if v} == {r: 1 for r in rules}


def test_activity_adds_up_across_records_before_the_window_closes() -> None:
    state = RiskState(0, 60, RULES)
    state.apply(activity(T0, {"s": [6, 1, 0]}))
    state.apply(activity(T0, {"s": [4, 1, 0]}))
    assert {f.rule for f in state.apply(mark(T0 + 60))} == {"velocity", "spam_reports"}
    assert state.apply(mark(T0 + 120)) == []  # never twice for the same window


def test_inmail_horizon_forgets_old_buckets() -> None:
    state = RiskState(0, 60, RULES)
    state.apply(activity(T0, {"r": [0, 0, 15]}))
    state.apply(mark(T0 + 60))
    later = T0 + 15 * DAY
    state.apply(activity(later, {"r": [0, 0, 10]}))
    # 25 InMails without responses in all, but the first 15 are past the 14-day horizon
    assert state.apply(mark(later + 60)) == []
    # a response to one of the 15 old ones counts nowhere; one to a recent one does
    responses = {"r": {BUCKET0: 1, later - later % DAY: 1}}
    state.apply(activity(later + 60, {"r": [0, 0, 10]}, responses))
    (flag,) = state.apply(mark(later + 120))
    assert flag.rule == "inmail_response"
    assert flag.evidence["inmails"] == 20 and flag.evidence["responses"] == 1


def test_a_response_counts_for_its_inmails_send_day_once_its_window_closes() -> None:
    state = RiskState(0, 60, RULES)
    state.apply(activity(T0, {"r": [0, 0, 20]}))
    state.apply(mark(T0 + 60))
    # three responses to day-0 InMails, in a window without other activity of the sender
    state.apply(activity(T0 + 3 * DAY, {}, {"r": {BUCKET0: 3}}))
    assert state.history.get("r")[BUCKET0] == [20, 0]  # not before its window closes
    state.apply(mark(T0 + 3 * DAY + 60))
    assert state.history.get("r")[BUCKET0] == [20, 3]
    state.apply(activity(T0 + 3 * DAY + 60, {"r": [0, 0, 0]}))
    restored = RiskState(0, 60, RULES)
    restored.restore(state.dumps())
    assert restored.dumps() == state.dumps()


def test_late_activity_is_counted_not_judged_and_state_round_trips() -> None:
    state = RiskState(0, 60, RULES)
    state.apply(activity(T0 + 60, {"r": [0, 0, 5]}, {"r": {BUCKET0: 1}}))
    state.apply(mark(T0 + 60))
    state.apply(activity(T0, {"x": [50, 0, 0]}))  # its window closed already
    assert state.late_events == 50
    restored = RiskState(0, 60, RULES)
    restored.restore(state.dumps())
    assert restored.dumps() == state.dumps()
    assert restored.windows == {T0 + 60: {"r": [0, 0, 5]}}
    assert restored.responses == {T0 + 60: {"r": {BUCKET0: 1}}}


def test_a_batch_delivered_again_is_not_counted_again() -> None:
    """After a crash and a broker restart the committed input offsets can lag what the
    state holds: an ingest batch's activity seen again is skipped, also after a restore."""
    state = RiskState(0, 60, RULES)
    record = activity(T0, {"s-1": [6, 0, 0]})
    state.apply(record)
    restored = RiskState(0, 60, RULES)
    restored.restore(state.dumps())
    for again in (state, restored):
        again.apply(record)  # the same batch (source, offset) again
        assert [f.rule for f in again.apply(mark(T0 + 60))] == []  # 6 < 10, not 12
