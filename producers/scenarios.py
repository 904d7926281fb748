"""Named incident scenarios for the simulator: baseline traffic, then an incident.

A scenario is the baseline profile up to ``incident_start`` (by default 30 event-minutes
after the producer's start) and an incident from then on: a variant of the profile made
with ``dataclasses.replace`` and, for ``bot-sender``, a few bot accounts. The simulator
draws no random number for the incident before it starts, so everything before
``incident_start`` is exactly the ``baseline`` scenario's stream (same seed, same
events). Each scenario names the alerts it should provoke (``prometheus/alert_rules.yml``,
runbooks in ``docs/runbooks.md``); ``baseline`` should provoke none.

``incident_duration`` (optional) ends the incident: baseline behaviour resumes, so a
demo shows the alerts resolving too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from producers.profile import BotSenders, Phase, SimulationProfile
from producers.simulator import Simulator

INCIDENT_AFTER_SECONDS = 30 * 60.0  # event time from the start to the incident


def spam_wave_profile(profile: SimulationProfile) -> SimulationProfile:
    """A spam campaign: abusive accounts open 5x as many conversations as usual, and
    their openers are reported more often (0.15 -> 0.25)."""
    return replace(
        profile,
        abusive_activity=profile.abusive_activity * 5,
        spam_report_probability={**profile.spam_report_probability, "abusive": 0.25},
    )


def reply_drop_profile(profile: SimulationProfile) -> SimulationProfile:
    """A broken reply box: 60 % of replies fail to send and the member gives up."""
    return replace(profile, reply_failure_probability=0.6)


def latency_incident_profile(profile: SimulationProfile) -> SimulationProfile:
    """A notification backlog: members learn of a new conversation 6 hours late, so
    every first reply comes 6 hours later than it would have."""
    return replace(profile, first_reply_delay=6 * 3600.0)


def no_change(profile: SimulationProfile) -> SimulationProfile:
    return profile


# Outreach automation on a few hijacked or rented accounts: 50 new conversations per
# event-minute each (the velocity rule flags 40), to strangers who answer half as often
# as usual and seldom report them.
BOTS = BotSenders(accounts=3, messages_per_minute=50.0, reply_factor=0.5, report_probability=0.01)


@dataclass(frozen=True)
class ScenarioSpec:
    name: str
    summary: str
    alerts: tuple[str, ...]  # the alerts the incident should provoke
    incident: Callable[[SimulationProfile], SimulationProfile] | None
    bots: BotSenders | None = None


SPECS: dict[str, ScenarioSpec] = {
    spec.name: spec
    for spec in (
        ScenarioSpec("baseline", "normal traffic, no incident", (), None),
        ScenarioSpec(
            "spam-wave",
            "abusive accounts open 5x as many conversations, reported 25 % of the time",
            ("MessagingSpamReportsHigh", "MessagingBlocksSurge"),
            spam_wave_profile,
        ),
        ScenarioSpec(
            "reply-drop",
            "60 % of replies fail to send (a broken reply box)",
            ("MessagingReplyRateDrop", "MessagingInMailResponseRateLow"),
            reply_drop_profile,
        ),
        ScenarioSpec(
            "latency-incident",
            "members learn of new conversations 6 hours late (a notification backlog)",
            ("MessagingReplyRateDrop", "MessagingInMailResponseRateLow",
             "MessagingFirstReplyLatencyHigh"),
            latency_incident_profile,
        ),
        ScenarioSpec(
            "bot-sender",
            "3 accounts each open 50 conversations per event-minute with strangers",
            ("MessagingFlaggedSendersSurge",),
            no_change,
            BOTS,
        ),
    )
}
SCENARIO_NAMES: tuple[str, ...] = tuple(SPECS)


@dataclass(frozen=True)
class Scenario:
    """A baseline profile and the phases that follow it (the incident, its end)."""

    name: str
    summary: str
    alerts: tuple[str, ...]
    baseline: SimulationProfile
    phases: tuple[Phase, ...] = ()

    @property
    def incident_start(self) -> float | None:
        return self.phases[0].start_ts if self.phases else None

    def phase_at(self, ts: float) -> Phase | None:
        """The phase in force at event time ``ts`` (None: the baseline)."""
        current = None
        for phase in self.phases:
            if phase.start_ts <= ts:
                current = phase
        return current

    def profile_at(self, ts: float) -> SimulationProfile:
        phase = self.phase_at(ts)
        return self.baseline if phase is None else phase.profile

    def bots_at(self, ts: float) -> BotSenders | None:
        phase = self.phase_at(ts)
        return None if phase is None else phase.bots

    def simulator(
        self, *, seed: int, start_ts: float, rate: float, speed: float, members: int
    ) -> Simulator:
        """A simulator of this scenario (``start_ts`` may be earlier: a warmup)."""
        return Simulator(
            self.baseline, seed=seed, start_ts=start_ts, rate=rate, speed=speed,
            members=members, phases=self.phases,
        )


def build_scenario(
    name: str,
    *,
    start_ts: float,
    incident_after: float = INCIDENT_AFTER_SECONDS,
    incident_duration: float | None = None,
    profile: SimulationProfile | None = None,
) -> Scenario:
    """Scenario ``name`` whose incident starts ``incident_after`` event seconds after
    ``start_ts`` (and, if ``incident_duration`` is given, ends that much later)."""
    spec = SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIO_NAMES)}")
    if incident_after < 0 or (incident_duration is not None and incident_duration <= 0):
        raise ValueError("incident_after must be >= 0 and incident_duration > 0")
    base = SimulationProfile() if profile is None else profile
    phases: tuple[Phase, ...] = ()
    if spec.incident is not None:
        begin = float(start_ts) + incident_after
        phases = (Phase(begin, spec.incident(base), spec.bots),)
        if incident_duration is not None:
            phases += (Phase(begin + incident_duration, base),)
    return Scenario(spec.name, spec.summary, spec.alerts, base, phases)
