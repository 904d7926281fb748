"""Simulator scenarios: deterministic, identical to the baseline until the incident, and
each incident moves the metric its alert watches the expected way (counted offline)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
from collections import Counter
from functools import cache
from itertools import islice, takewhile
from pathlib import Path
from typing import Any

import orjson
import pytest

from producers.cli import add_arguments, main
from producers.profile import Phase, SimulationProfile
from producers.run import run_producer
from producers.scenarios import (
    INCIDENT_AFTER_SECONDS,
    SCENARIO_NAMES,
    SPECS,
    build_scenario,
)
from producers.simulator import Simulator
from producers.sinks import JsonlSink
from streams.settings import Settings

START = 1_767_268_800.0  # 2026-01-01T12:00:00Z
RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks.md"
INCIDENTS = [name for name in SCENARIO_NAMES if name != "baseline"]


def events(name: str, n: int, *, incident_after: float = 300.0, seed: int = 3,
           **kwargs: Any) -> list[dict[str, Any]]:
    scenario = build_scenario(name, start_ts=START, incident_after=incident_after)
    options = {"rate": 2000.0, "speed": 60.0, "members": 3000, **kwargs}
    return list(islice(scenario.simulator(seed=seed, start_ts=START, **options).events(), n))


def test_names_and_defaults() -> None:
    assert SCENARIO_NAMES == (
        "baseline", "spam-wave", "reply-drop", "latency-incident", "bot-sender")
    assert INCIDENT_AFTER_SECONDS == 1800
    baseline = build_scenario("baseline", start_ts=START)
    assert baseline.phases == () and baseline.incident_start is None
    assert baseline.alerts == ()
    for name in INCIDENTS:
        scenario = build_scenario(name, start_ts=START)
        assert scenario.incident_start == START + 1800
        assert scenario.alerts, name
    with pytest.raises(ValueError, match="unknown scenario"):
        build_scenario("meteor-strike", start_ts=START)


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_same_seed_and_scenario_give_the_same_events(name: str) -> None:
    first = events(name, 12_000)
    assert events(name, 12_000) == first
    assert events(name, 3_000, seed=4) != first[:3_000]


@pytest.mark.parametrize("name", INCIDENTS)
def test_identical_to_the_baseline_until_the_incident(name: str) -> None:
    incident = START + 300.0
    before = [e for e in events("baseline", 12_000) if e["ts"] < incident]
    scenario = events(name, 12_000)
    assert len(before) > 3_000
    assert scenario[: len(before)] == before
    assert scenario[len(before)]["ts"] >= incident
    assert scenario != events("baseline", 12_000)  # and not after it


def test_profile_and_bots_by_event_time_and_an_incident_that_ends() -> None:
    scenario = build_scenario(
        "reply-drop", start_ts=START, incident_after=600, incident_duration=3600)
    assert scenario.profile_at(START + 599) == scenario.baseline == SimulationProfile()
    assert scenario.profile_at(START + 600).reply_failure_probability == 0.6
    assert scenario.profile_at(START + 4200) == scenario.baseline
    bots = build_scenario("bot-sender", start_ts=START)
    assert bots.bots_at(START) is None
    assert bots.bots_at(START + 1800) == SPECS["bot-sender"].bots
    assert bots.profile_at(START + 1800) == bots.baseline


def test_phases_cannot_change_the_population_or_the_traffic() -> None:
    changed = dataclasses.replace(SimulationProfile(), abusive_share=0.2)
    with pytest.raises(ValueError, match="abusive_share"):
        Simulator(SimulationProfile(), seed=1, start_ts=START, rate=100, speed=60, members=500,
                  phases=(Phase(START + 60, changed),))


def test_every_scenario_is_documented_with_its_alerts() -> None:
    text = RUNBOOKS.read_text()
    for name in SCENARIO_NAMES:
        rows = [line for line in text.splitlines() if line.startswith(f"| `{name}`")]
        assert rows, f"no row for {name} in the scenarios table of docs/runbooks.md"
        for alert in SPECS[name].alerts:
            assert alert in rows[0], (name, alert)


# --- each incident moves its metric, counted the way the worker counts -----------------------
@dataclasses.dataclass
class Tally:
    messages: int = 0
    started: Counter[str] = dataclasses.field(default_factory=Counter)
    replies: Counter[str] = dataclasses.field(default_factory=Counter)
    latencies: list[float] = dataclasses.field(default_factory=list)
    spam: int = 0
    blocks: int = 0
    per_sender_window: Counter[tuple[int, str]] = dataclasses.field(default_factory=Counter)

    def reply_rate(self, channel: str | None = None) -> float:
        if channel is None:
            return sum(self.replies.values()) / sum(self.started.values())
        return self.replies[channel] / self.started[channel]

    def p95_latency(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[math.ceil(0.95 * len(ordered)) - 1]

    def senders_over(self, messages: int) -> int:
        """Sender-windows with at least ``messages`` messages (the velocity rule)."""
        return sum(count >= messages for count in self.per_sender_window.values())


@cache
def tally(name: str, hours: float = 1.0, warmup_hours: float = 2.0) -> Tally:
    """The ``hours`` after the incident starts, after a warmup (rate 300/s at speed 60:
    five events per event second)."""
    scenario = build_scenario(name, start_ts=START, incident_after=0)
    sim = scenario.simulator(seed=9, start_ts=START - warmup_hours * 3600, rate=300.0,
                             speed=60.0, members=5000)
    end = START + hours * 3600
    out = Tally()
    conversations: dict[str, tuple[float, str, str]] = {}
    for e in takewhile(lambda e: e["ts"] < end, sim.events()):
        counted = e["ts"] >= START
        if e["type"] == "message_sent":
            if e["first_in_conversation"]:
                conversations[e["conversation_id"]] = (e["ts"], e["recipient_id"], e["channel"])
                if counted:
                    out.started[e["channel"]] += 1
            else:
                conv = conversations.get(e["conversation_id"])
                if conv is not None and e["sender_id"] == conv[1]:
                    del conversations[e["conversation_id"]]
                    if counted:
                        out.replies[conv[2]] += 1
                        out.latencies.append(e["ts"] - conv[0])
            if counted:
                out.messages += 1
                out.per_sender_window[(int(e["ts"] // 60), e["sender_id"])] += 1
        elif counted and e["type"] == "spam_reported":
            out.spam += 1
        elif counted and e["type"] == "member_blocked":
            out.blocks += 1
    return out


def test_spam_wave_raises_spam_reports_and_blocks_per_1k() -> None:
    base, wave = tally("baseline"), tally("spam-wave")
    assert wave.spam / wave.messages > 3 * base.spam / base.messages
    assert wave.blocks / wave.messages > 2 * base.blocks / base.messages


def test_reply_drop_lowers_reply_and_inmail_response_rates() -> None:
    base, drop = tally("baseline"), tally("reply-drop")
    assert drop.reply_rate() < 0.6 * base.reply_rate()
    assert drop.reply_rate("inmail") < 0.6 * base.reply_rate("inmail")


def test_latency_incident_raises_first_reply_latency_and_lowers_the_reply_rate() -> None:
    # replies to conversations started in the incident come 6 hours late: within the hour
    # only older conversations' (slower) replies arrive, and fewer of them
    base, slow = tally("baseline"), tally("latency-incident")
    assert slow.p95_latency() > 1.15 * base.p95_latency()
    assert slow.reply_rate() < 0.5 * base.reply_rate()


def test_bot_sender_puts_senders_over_the_velocity_rule() -> None:
    base, bots = tally("baseline"), tally("bot-sender")
    assert base.senders_over(40) == 0
    assert bots.senders_over(40) >= 2 * 60  # most of the 3 bots in each of 60 windows
    flagged = Counter(s for (_, s), c in bots.per_sender_window.items() if c >= 40)
    assert len(flagged) == SPECS["bot-sender"].bots.accounts  # type: ignore[union-attr]


# --- the producer: --scenario and --warmup ------------------------------------------------------
def _produce(path: Path, **kwargs: Any) -> tuple[Any, list[dict[str, Any]]]:
    options: dict[str, Any] = {"events": 6000, "duration": None, "rate": 0.0, "speed": 60.0,
                               "seed": 5, "start_ts": START, "members": 2000}
    options.update(kwargs)
    report = asyncio.run(run_producer(Settings(), sink=JsonlSink(path), **options))
    return report, [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_warmup_sends_history_first_then_paces_from_the_start(tmp_path: Path) -> None:
    # 20000 events per wall second at 6000x: 3.3 events per event second, so the 600 s
    # warmup is about 2000 events, sent at once; the other 4000 are paced (0.2 s)
    report, sent = _produce(tmp_path / "a.jsonl", warmup=600.0, rate=20_000.0, speed=6000.0)
    history = [e for e in sent if e["ts"] < START]
    assert report.warmup_events == len(history) > 1000
    assert sent[: len(history)] == history  # history first, in ts order
    assert START - 600 <= sent[0]["ts"] and sent[len(history)]["ts"] >= START
    assert report.events_sent == len(sent) == 6000
    assert report.elapsed_seconds >= 0.9 * (6000 - len(history)) / 20_000
    again, _ = _produce(tmp_path / "b.jsonl", warmup=600.0, rate=20_000.0, speed=6000.0)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert again.warmup_events == report.warmup_events


def test_producer_runs_a_scenario(tmp_path: Path) -> None:
    _, baseline = _produce(tmp_path / "base.jsonl", events=4000)
    _, bots = _produce(tmp_path / "bots.jsonl", events=4000, scenario="bot-sender",
                       incident_after=10.0)
    cut = next(i for i, e in enumerate(baseline) if e["ts"] >= START + 10)
    assert bots[:cut] == baseline[:cut]
    by_sender = Counter(e.get("sender_id") for e in bots[cut:] if e["type"] == "message_sent")
    assert by_sender.most_common(1)[0][1] > 10 * sorted(by_sender.values())[len(by_sender) // 2]


def test_cli_options_fall_back_to_settings(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Settings(producer_scenario="spam-wave", producer_warmup_seconds=90))
    args = parser.parse_args([])
    assert (args.scenario, args.warmup, args.incident_after) == ("spam-wave", 90.0, 1800.0)
    args = parser.parse_args(["--scenario", "bot-sender", "--warmup", "0",
                              "--incident-after", "60"])
    assert (args.scenario, args.warmup, args.incident_after) == ("bot-sender", 0.0, 60.0)
    with pytest.raises(SystemExit):
        parser.parse_args(["--scenario", "nope"])
    bad = argparse.ArgumentParser()
    add_arguments(bad, Settings(producer_scenario="nope"))  # from the environment
    args = bad.parse_args(["--sink", "jsonl", "--output", str(tmp_path / "x.jsonl")])
    assert asyncio.run(main(args, Settings())) == 2
