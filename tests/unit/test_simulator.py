"""The simulator: determinism, the event contract, and the shape of the traffic."""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter, defaultdict
from functools import cache
from itertools import islice
from typing import Any

import pytest

from producers.population import build_population
from producers.profile import (
    CHANNELS,
    CONTENT_TYPES,
    ENTRY_POINTS,
    PLATFORMS,
    REPORT_REASONS,
    SENDER_TYPES,
    SimulationProfile,
)
from producers.simulator import Simulator

START = 1_767_225_600.0  # 2026-01-01T00:00:00Z
PROFILE = SimulationProfile()

COMMON = {
    "event_id": str,
    "type": str,
    "ts": float,
    "conversation_id": str,
    "schema_version": int,
}
PER_TYPE: dict[str, dict[str, Any]] = {
    "message_sent": {
        "message_id": str,
        "sender_id": str,
        "recipient_id": str,
        "sender_type": SENDER_TYPES,
        "channel": CHANNELS,
        "content_type": CONTENT_TYPES,
        "platform": PLATFORMS,
        "entry_point": ENTRY_POINTS,
        "first_in_conversation": bool,
    },
    "message_read": {"message_id": str, "reader_id": str, "platform": PLATFORMS},
    "spam_reported": {
        "message_id": str,
        "reporter_id": str,
        "reported_id": str,
        "reason": REPORT_REASONS,
        "platform": PLATFORMS,
    },
    "member_blocked": {"blocker_id": str, "blocked_id": str, "platform": PLATFORMS},
    "inmail_answered": {
        "message_id": str, "responder_id": str, "answer": ("accepted", "declined"),
        "platform": PLATFORMS,
    },
}


def simulate(
    n: int,
    *,
    seed: int = 7,
    rate: float = 2000.0,
    speed: float = 60.0,
    members: int = 5000,
    profile: SimulationProfile = PROFILE,
) -> list[dict[str, Any]]:
    sim = Simulator(profile, seed=seed, start_ts=START, rate=rate, speed=speed, members=members)
    return list(islice(sim.events(), n))


@cache
def steady_run() -> tuple[tuple[dict[str, Any], ...], frozenset[str]]:
    """~50k events over ~10 days of event time (one start a minute): replies have landed."""
    sim = Simulator(PROFILE, seed=11, start_ts=START, rate=1.0, speed=60.0, members=20_000)
    abusers = frozenset(i for i, bad in zip(sim.population.ids, sim.population.abusive) if bad)
    return tuple(islice(sim.events(), 50_000)), abusers


def check_event(event: dict[str, Any]) -> None:
    fields = {**COMMON, **PER_TYPE[event["type"]]}
    assert set(event) == set(fields), event
    for name, expected in fields.items():
        value = event[name]
        if isinstance(expected, tuple):
            assert value in expected, (name, event)
        else:
            assert type(value) is expected, (name, event)
    assert event["schema_version"] == 2  # the InMail answer is new in version 2
    assert math.isfinite(event["ts"])


def test_same_inputs_give_the_same_events() -> None:
    first = simulate(20_000)
    assert simulate(20_000) == first
    sim = Simulator(PROFILE, seed=7, start_ts=START, rate=2000.0, speed=60.0, members=5000)
    assert list(islice(sim.events(), 1000)) == first[:1000]  # events() replays


@pytest.mark.parametrize("change", [{"seed": 8}, {"rate": 1000.0}, {"members": 5001}])
def test_different_inputs_give_different_events(change: dict[str, Any]) -> None:
    assert simulate(2000, **change) != simulate(2000)


def test_every_event_meets_the_contract() -> None:
    events = simulate(20_000)
    seen_conversations: set[str] = set()
    message_ids: set[str] = set()
    previous_ts = START
    for event in events:
        check_event(event)
        assert event["ts"] >= previous_ts
        previous_ts = event["ts"]
        cid = event["conversation_id"]
        opener = event["type"] == "message_sent" and event["first_in_conversation"]
        assert opener == (cid not in seen_conversations), event
        seen_conversations.add(cid)
        if event["type"] == "message_sent":
            assert event["message_id"] not in message_ids
            message_ids.add(event["message_id"])
            assert event["sender_id"] != event["recipient_id"]
        elif "message_id" in event:
            assert event["message_id"] in message_ids  # refers to an earlier message
    assert len({e["event_id"] for e in events}) == len(events)
    assert set(Counter(e["type"] for e in events)) == set(PER_TYPE)


def test_replies_come_from_the_recipient_on_the_conversation_channel() -> None:
    events, _ = steady_run()
    openers = {e["conversation_id"]: e for e in events if e.get("first_in_conversation")}
    replies = 0
    for event in events:
        if event["type"] != "message_sent" or event["first_in_conversation"]:
            continue
        opener = openers[event["conversation_id"]]
        assert event["channel"] == opener["channel"]
        assert {event["sender_id"], event["recipient_id"]} == {
            opener["sender_id"],
            opener["recipient_id"],
        }
        replies += 1
    assert replies > 1000


def assert_shares(counts: Counter[str], expected: dict[str, float]) -> None:
    """Within 0.02, or four standard errors when the sample is too small for that."""
    total = sum(counts.values())
    assert set(counts) <= set(expected)
    for category, share in expected.items():
        tolerance = max(0.02, 4 * math.sqrt(share * (1 - share) / total))
        assert abs(counts[category] / total - share) <= tolerance, (category, counts)


def test_traffic_matches_the_profile() -> None:
    events, _ = steady_run()
    openers = [e for e in events if e.get("first_in_conversation")]
    assert_shares(Counter(e["sender_type"] for e in openers), PROFILE.starter_shares)
    by_type: dict[str, Counter[str]] = defaultdict(Counter)
    for e in openers:
        by_type[e["sender_type"]][e["channel"]] += 1
    for sender_type, channels in by_type.items():
        assert_shares(channels, PROFILE.channel_given_sender[sender_type])
    messages = [e for e in events if e["type"] == "message_sent"]
    assert_shares(Counter(e["platform"] for e in messages), PROFILE.platform_shares)


def test_reply_rates_rank_by_channel() -> None:
    events, _ = steady_run()
    channel_of = {
        e["conversation_id"]: e["channel"] for e in events if e.get("first_in_conversation")
    }
    replied = {
        e["conversation_id"]
        for e in events
        if e["type"] == "message_sent" and not e["first_in_conversation"]
    }
    started = Counter(channel_of.values())
    answered = Counter(channel_of[c] for c in replied)
    rate = {c: answered[c] / started[c] for c in CHANNELS}
    assert all(answered[c] > 0 for c in CHANNELS), answered
    assert rate["connection"] > rate["inmail"] > rate["sponsored"], rate


def test_spam_reports_land_mostly_on_abusive_senders() -> None:
    events, abusers = steady_run()
    reports = [e for e in events if e["type"] == "spam_reported"]
    assert len(reports) > 50
    assert sum(e["reported_id"] in abusers for e in reports) / len(reports) > 0.5
    assert any(e["type"] == "member_blocked" for e in events)


def test_traffic_peaks_in_the_working_day() -> None:
    events, _ = steady_run()
    hours = Counter(int(e["ts"] // 3600 % 24) for e in events if e.get("first_in_conversation"))
    assert hours[14] > 2 * hours[2]  # 14:00 UTC peak, 02:00 trough


def test_starts_are_spaced_so_event_time_runs_speed_times_wall_time() -> None:
    flat = dataclasses.replace(PROFILE, diurnal_amplitude=0.0)
    events = simulate(20_000, rate=100.0, speed=50.0, profile=flat)
    starts = [e["ts"] for e in events if e.get("first_in_conversation")]
    mean_gap = (starts[-1] - starts[0]) / (len(starts) - 1)
    # 100 events per wall second at 50 event-seconds per wall second is 2 events per
    # event-second, i.e. one conversation start every events_per_conversation / 2 s
    assert mean_gap == pytest.approx(50.0 * flat.events_per_conversation / 100.0, rel=0.05)


def test_rate_zero_uses_the_default_event_time_rate() -> None:
    assert simulate(100, rate=0.0) == simulate(100, rate=PROFILE.default_rate)


def test_population_is_seeded_typed_and_connected() -> None:
    population = build_population(3000, PROFILE, random.Random(1))
    assert population == build_population(3000, PROFILE, random.Random(1))
    assert population.ids[123] == "m-000123"
    assert sum(population.abusive) == 30
    counts = Counter(population.sender_types)
    assert counts["advertiser"] >= 1 and counts["recruiter"] == round(0.035 * 3000)
    for i, sender_type in enumerate(population.sender_types):
        assert bool(population.connections[i]) == (sender_type != "advertiser")
        assert all(i in population.connections[j] for j in population.connections[i])


def test_connection_messages_go_to_connections() -> None:
    sim = Simulator(PROFILE, seed=2, start_ts=START, rate=100.0, speed=60.0, members=3000)
    index = {account: i for i, account in enumerate(sim.population.ids)}
    openers = 0
    for e in islice(sim.events(), 5000):
        if e.get("first_in_conversation") and e["channel"] == "connection":
            sender, recipient = index[e["sender_id"]], index[e["recipient_id"]]
            assert recipient in sim.population.connections[sender]
            openers += 1
    assert openers > 500


@pytest.mark.parametrize(
    "change",
    [
        {"platform_shares": {"web": 0.5, "ios": 0.3}},  # sums to 0.8
        {"starter_shares": {"member": 0.9, "bot": 0.1}},  # unknown sender type
        {"reply_probability": {"connection": 0.5}},  # channels missing
        {"diurnal_amplitude": 1.0},  # would stop traffic at night
    ],
)
def test_profile_rejects_inconsistent_values(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(PROFILE, **change)
