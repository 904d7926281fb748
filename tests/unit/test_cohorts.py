"""Cohorts, through the worker's own pure path (ingest core, records, owners, via the
offline replay): finality, horizons, out-of-order input, InMail answers, bounds."""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson
import pytest

from streams.aggregate.cohorts import Cohorts
from streams.replay import replay
from streams.settings import Settings

DAY0 = 1_789_948_800  # 2026-09-21T00:00:00Z
H = 3600
SETTINGS = Settings(events_partitions=1, partials_partitions=1, activity_partitions=1)
_ids = itertools.count()


def event(kind: str, ts: float, cid: str, version: int = 2, **fields: Any) -> dict[str, Any]:
    return {"event_id": f"e-{next(_ids)}", "type": kind, "ts": ts, "conversation_id": cid,
            "schema_version": version, **fields}


def message(ts: float, cid: str, sender: str, recipient: str, first: bool,
            channel: str = "connection", sender_type: str = "member",
            version: int = 2) -> dict[str, Any]:
    return event("message_sent", ts, cid, version, message_id=f"m-{next(_ids)}",
                 sender_id=sender, recipient_id=recipient, sender_type=sender_type,
                 channel=channel, content_type="text", platform="web", entry_point="inbox",
                 first_in_conversation=first)


def answer(ts: float, cid: str, responder: str, kind: str) -> dict[str, Any]:
    return event("inmail_answered", ts, cid, message_id="m", responder_id=responder,
                 answer=kind, platform="ios")


def run(events: list[dict[str, Any]], settings: Settings = SETTINGS) -> dict[Any, Any]:
    """Cohort finals by (kind, resolution, horizon, start): counts summed over owners."""
    finals: dict[Any, Any] = {}
    for final in replay([orjson.dumps(e) for e in events], settings).cohort_finals:
        key = (final.kind, final.resolution, final.horizon, final.start)
        assert key not in finals, f"{key} made final twice"
        finals[key] = final.counts
    return finals


def until(ts: float, since: float = DAY0) -> list[dict[str, Any]]:
    """Event time moving on to ``ts``: an unanswered conversation every 12 hours (one
    event may not jump more than MAX_AHEAD_SECONDS, a day, ahead of the last)."""
    steps = range(int(since) + 43_200, int(ts) + 1, 43_200)
    return [message(t, f"tick-{t}", "ticker", "nobody", True) for t in [*steps, ts]]


def replied_within(counts: dict[Any, int], channel: str) -> int:
    return sum(v for k, v in counts.items() if k[0] == "cohort_reply" and k[1] == channel)


def conversations(hour: float, n: int, latency: float, channel: str = "connection") -> list:
    """``n`` conversations started in the hour after ``hour``, each replied after
    ``latency`` seconds (none when latency is None)."""
    out = []
    for i in range(n):
        cid, ts = f"c-{next(_ids)}", hour + 60 * i
        out.append(message(ts, cid, f"a{i}", f"b{i}", True, channel))
        if latency is not None:
            out.append(message(ts + latency, cid, f"b{i}", f"a{i}", False, channel))
    return out


def test_a_horizon_counts_only_replies_inside_it_and_final_comes_after_it() -> None:
    hour = DAY0 + 10 * H
    events = conversations(hour, 3, 30 * 60) + conversations(hour, 2, 5 * H) + conversations(
        hour, 1, None)
    events += until(DAY0 + 3 * 86_400)
    events.sort(key=lambda e: e["ts"])
    finals = run(events)
    one_hour = finals[("reply", "hour", "1h", hour)]
    day = finals[("reply", "hour", "24h", hour)]
    assert one_hour[("cohort_started", "connection")] == 6
    assert replied_within(one_hour, "connection") == 3  # the 5-hour replies came too late
    assert replied_within(day, "connection") == 5
    assert ("reply", "hour", "7d", hour) not in finals  # not final for 7 days yet
    assert finals[("reply", "day", "24h", DAY0)][("cohort_started", "connection")] == 6 + 1


def test_a_final_waits_for_the_watermark_past_cohort_end_plus_horizon() -> None:
    hour = DAY0 + 10 * H
    base = conversations(hour, 2, 10 * 60)
    # The replay's end closes the window of its newest event (every source idle): a
    # stream ending in the minute before cohort end + 1 h leaves the final to come...
    not_yet = run([*base, message(hour + 2 * H - 61, "c-x", "x", "y", True)])
    assert ("reply", "hour", "1h", hour) not in not_yet
    # ... one ending in the minute after it has made it final
    done = run([*base, message(hour + 2 * H, "c-x", "x", "y", True)])
    assert replied_within(done[("reply", "hour", "1h", hour)], "connection") == 2


def test_out_of_order_within_the_lateness_gives_the_same_finals() -> None:
    rng = random.Random(8)
    events = []
    for start in range(DAY0 + 9 * H, DAY0 + 12 * H, 600):
        events += conversations(start, 4, rng.choice([120, 3000, 7000, 50_000, None]))
    events += until(DAY0 + 2 * 86_400)
    events.sort(key=lambda e: e["ts"])
    in_order = run(events)
    # shuffled by up to 20 event-seconds (< 30 s lateness), each conversation in order
    slots = sorted(range(len(events)), key=lambda i: events[i]["ts"] + rng.uniform(0, 20))
    by_conversation: dict[str, list[int]] = {}
    for position, index in enumerate(slots):
        by_conversation.setdefault(events[index]["conversation_id"], []).append(position)
    shuffled: list[Any] = [None] * len(events)
    for cid, positions in by_conversation.items():
        mine = [e for e in events if e["conversation_id"] == cid]
        for position, e in zip(positions, mine, strict=True):
            shuffled[position] = e
    assert shuffled != events
    assert run(shuffled) == in_order
    assert len(in_order) >= 10


def test_inmail_responses_count_for_the_send_day_by_sender_type_and_answer() -> None:
    settings = SETTINGS.model_copy(update={"inmail_response_horizon_seconds": 2 * 86_400})
    t = DAY0 + 9 * H
    events = []
    for i, (kind, reply_after) in enumerate([("accepted", H), ("declined", 2 * H),
                                             ("replied", 3 * H), (None, None),
                                             ("declined", 3 * 86_400)]):  # too late
        cid = f"in-{i}"
        events.append(message(t + i, cid, "recruiter-1", f"cand-{i}", True, "inmail",
                              "recruiter"))
        if kind == "replied":
            events.append(message(t + reply_after, cid, f"cand-{i}", "recruiter-1", False,
                                  "inmail"))
        elif kind is not None:
            events.append(answer(t + reply_after, cid, f"cand-{i}", kind))
    # an answer by someone else, and a version 1 InMail from a premium member
    events.append(answer(t + 2 * H, "in-3", "stranger", "accepted"))
    events.append(message(t + 5, "in-v1", "premium-1", "cand-9", True, "inmail", "premium", 1))
    events.append(answer(t + H, "in-v1", "cand-9", "accepted"))
    events += until(DAY0 + 5 * 86_400)
    events.sort(key=lambda e: e["ts"])
    finals = run(events, settings)
    day = finals[("inmail", "day", "2d", DAY0)]
    assert day[("inmail_sent", "recruiter")] == 5
    assert day[("inmail_sent", "premium")] == 1
    responses = {k[1:]: v for k, v in day.items() if k[0] == "inmail_response"}
    assert responses == {("recruiter", "accepted"): 1, ("recruiter", "declined"): 1,
                         ("recruiter", "replied"): 1, ("premium", "accepted"): 1}


def test_an_answer_needs_schema_version_2() -> None:
    old = answer(DAY0, "c", "r", "accepted") | {"schema_version": 1}
    result = replay([orjson.dumps(old)], SETTINGS)
    assert result.invalid == {"unsupported_schema_version": 1}


@pytest.mark.parametrize("days_later", [1, 9])
def test_cohorts_are_forgotten_once_no_horizon_needs_them(days_later: int) -> None:
    cohorts = Cohorts(inmail_horizon=2 * 86_400)
    cohorts.add({"hour": {str(DAY0 + H): {"cohort_started|connection": 1}},
                 "day": {str(DAY0): {"inmail_sent|recruiter": 1}}})
    finals = cohorts.close(owner=0, before=DAY0 + 2 * H, after=DAY0 + days_later * 86_400)
    kept = days_later < 8  # the hour's day is final for 7 days at day 8
    assert bool(cohorts.hours) is kept
    assert bool(cohorts.inmail_days) is (days_later < 3)
    assert {(f.kind, f.resolution, f.horizon) for f in finals} >= {("reply", "hour", "1h")}
    restored = Cohorts.from_json(cohorts.to_json(), 2 * 86_400)
    assert restored.to_json() == cohorts.to_json()
