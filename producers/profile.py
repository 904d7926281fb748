"""Every tunable of the synthetic messaging model, with realistic defaults.

Shares are plain ``dict``s (category -> weight, summing to 1) so tests and tools can
read the configured values back and compare them with what the simulator produced.
Latencies are log-normal, given as ``(median_seconds, sigma)``: the median is what a
product person quotes ("InMail replies take about five hours"), sigma its spread.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SENDER_TYPES = ("member", "premium", "recruiter", "advertiser")
ANSWERS = ("accepted", "declined")  # an InMail recipient's answer without a reply
CHANNELS = ("connection", "inmail", "sponsored")
CONTENT_TYPES = ("text", "attachment", "rich_media")
PLATFORMS = ("web", "ios", "android")
ENTRY_POINTS = ("inbox", "profile", "job_listing", "search")
REPORT_REASONS = ("spam", "scam", "harassment", "other")

Shares = dict[str, float]
LogNormal = tuple[float, float]  # (median seconds, sigma of the underlying normal)


def _starter_shares() -> Shares:
    return {"member": 0.70, "premium": 0.12, "recruiter": 0.13, "advertiser": 0.05}


def _account_shares() -> Shares:
    # Advertisers and recruiters are few accounts that start many conversations each.
    return {"member": 0.86, "premium": 0.10, "recruiter": 0.035, "advertiser": 0.005}


def _channel_given_sender() -> dict[str, Shares]:
    return {
        "member": {"connection": 1.0},
        "premium": {"connection": 0.80, "inmail": 0.20},
        "recruiter": {"connection": 0.25, "inmail": 0.75},
        "advertiser": {"sponsored": 1.0},
    }


def _platform_shares() -> Shares:
    return {"web": 0.45, "ios": 0.30, "android": 0.25}


def _content_shares() -> dict[str, Shares]:
    return {
        "connection": {"text": 0.86, "attachment": 0.08, "rich_media": 0.06},
        "inmail": {"text": 0.80, "attachment": 0.17, "rich_media": 0.03},
        "sponsored": {"text": 0.35, "attachment": 0.05, "rich_media": 0.60},
    }


def _entry_point_given_channel() -> dict[str, Shares]:
    return {
        "connection": {"inbox": 0.70, "profile": 0.20, "search": 0.08, "job_listing": 0.02},
        "inmail": {"inbox": 0.10, "profile": 0.30, "job_listing": 0.35, "search": 0.25},
        "sponsored": {"inbox": 0.90, "profile": 0.05, "job_listing": 0.05},
    }


def _reply_probability() -> Shares:
    return {"connection": 0.55, "inmail": 0.25, "sponsored": 0.03}


def _first_reply_latency() -> dict[str, LogNormal]:
    return {
        "connection": (20 * 60.0, 1.4),
        "inmail": (5 * 3600.0, 1.2),
        "sponsored": (2 * 3600.0, 1.3),
    }


def _spam_report_probability() -> Shares:
    return {"normal": 0.002, "abusive": 0.15}


def _report_reasons() -> dict[str, Shares]:
    return {
        "normal": {"spam": 0.45, "scam": 0.10, "harassment": 0.15, "other": 0.30},
        "abusive": {"spam": 0.60, "scam": 0.30, "harassment": 0.05, "other": 0.05},
    }


@dataclass(frozen=True)
class SimulationProfile:
    """The model's knobs. Build a variant with ``dataclasses.replace``."""

    # who starts conversations, and on which channel
    starter_shares: Shares = field(default_factory=_starter_shares)
    account_shares: Shares = field(default_factory=_account_shares)
    channel_given_sender: dict[str, Shares] = field(default_factory=_channel_given_sender)
    entry_point_given_channel: dict[str, Shares] = field(default_factory=_entry_point_given_channel)
    content_given_channel: dict[str, Shares] = field(default_factory=_content_shares)
    # platforms: each account has a preferred one drawn from this mix
    platform_shares: Shares = field(default_factory=_platform_shares)
    platform_stickiness: float = 0.85  # chance a message is sent from the preferred one
    # the connection graph (members, premium members and recruiters)
    mean_connections: float = 24.0
    # responses
    reply_probability: Shares = field(default_factory=_reply_probability)
    first_reply_latency: dict[str, LogNormal] = field(default_factory=_first_reply_latency)
    followup_probability: float = 0.45  # another message after each reply, alternating
    followup_latency: LogNormal = (8 * 60.0, 1.5)
    max_messages_per_conversation: int = 12
    read_probability: float = 0.80  # of a message that gets no answer
    read_delay: LogNormal = (15 * 60.0, 1.6)
    max_latency_seconds: float = 3 * 86_400.0  # log-normal tails are cut here
    # InMail recipients who do not reply often answer with a click instead: "Yes,
    # interested" or "No thanks" (an inmail_answered event, schema version 2); many
    # decline rather than reply
    inmail_answer_probability: float = 0.30  # of InMail openers that get no reply
    inmail_answers: Shares = field(default_factory=lambda: {"declined": 0.7, "accepted": 0.3})
    inmail_answer_latency: LogNormal = (3 * 3600.0, 1.3)
    # seconds before a recipient can first answer, added to the first-reply latency (a
    # notification backlog: the recipient only learns of the message this much later)
    first_reply_delay: float = 0.0
    # share of replies (any message but the opener) that fail to send (a broken reply
    # box): the member gives up and the conversation ends there
    reply_failure_probability: float = 0.0
    # risk
    abusive_share: float = 0.01  # of accounts
    abusive_activity: float = 6.0  # how many times more conversations an abuser starts
    abusive_reply_factor: float = 0.2  # abusers get this fraction of the usual replies
    spam_report_probability: Shares = field(default_factory=_spam_report_probability)
    report_reasons: dict[str, Shares] = field(default_factory=_report_reasons)
    report_delay: LogNormal = (3 * 60.0, 1.0)  # after reading the message
    block_after_report_probability: float = 0.40
    block_probability: float = 0.001  # blocks without a report
    block_delay: LogNormal = (30.0, 1.0)  # after the report or read
    # traffic shape: starts follow 1 + amplitude * cos(2*pi*(hour - peak)/24), mean 1
    diurnal_amplitude: float = 0.6
    diurnal_peak_hour_utc: float = 14.0
    default_rate: float = 1000.0  # event-time model's rate when the wall rate is 0
    # events one conversation start brings in the long run (reads, replies, reports;
    # measured on the default profile): turns rate and speed into the start rate
    events_per_conversation: float = 3.3

    def __post_init__(self) -> None:
        _check_shares("starter_shares", self.starter_shares, SENDER_TYPES)
        _check_shares("inmail_answers", self.inmail_answers, ANSWERS)
        _check_shares("account_shares", self.account_shares, SENDER_TYPES)
        _check_shares("platform_shares", self.platform_shares, PLATFORMS)
        for sender_type, shares in self.channel_given_sender.items():
            _check_shares(f"channel_given_sender[{sender_type}]", shares, CHANNELS)
        for channel in CHANNELS:
            _check_shares(
                f"entry_point_given_channel[{channel}]",
                self.entry_point_given_channel[channel],
                ENTRY_POINTS,
            )
            _check_shares(
                f"content_given_channel[{channel}]",
                self.content_given_channel[channel],
                CONTENT_TYPES,
            )
        for sender_type, share in self.starter_shares.items():
            if share > 0 and sender_type not in self.channel_given_sender:
                raise ValueError(f"channel_given_sender has no entry for {sender_type}")
        for name in ("reply_probability", "first_reply_latency"):
            missing = set(CHANNELS) - set(getattr(self, name))
            if missing:
                raise ValueError(f"{name}: missing channels {sorted(missing)}")
        if set(self.report_reasons) != {"normal", "abusive"}:
            raise ValueError("report_reasons needs 'normal' and 'abusive'")
        if set(self.spam_report_probability) != {"normal", "abusive"}:
            raise ValueError("spam_report_probability needs 'normal' and 'abusive'")
        for kind, reasons in self.report_reasons.items():
            _check_shares(f"report_reasons[{kind}]", reasons, REPORT_REASONS)
        if not 0.0 <= self.diurnal_amplitude < 1.0:
            raise ValueError("diurnal_amplitude must be in [0, 1)")
        if not 0.0 <= self.reply_failure_probability <= 1.0 or self.first_reply_delay < 0:
            raise ValueError("reply_failure_probability must be in [0, 1], first_reply_delay >= 0")


def _check_shares(name: str, shares: Shares, allowed: tuple[str, ...]) -> None:
    unknown = set(shares) - set(allowed)
    if unknown:
        raise ValueError(f"{name}: unknown categories {sorted(unknown)}")
    if any(weight < 0 for weight in shares.values()):
        raise ValueError(f"{name}: negative share")
    if abs(sum(shares.values()) - 1.0) > 1e-6:
        raise ValueError(f"{name}: shares sum to {sum(shares.values())}, not 1")


@dataclass(frozen=True)
class BotSenders:
    """A few accounts sending at machine speed (outreach automation, a hijacked account).

    Each bot account opens ``messages_per_minute`` new conversations per event-time
    minute (Poisson), on the connection channel, to random members found by search.
    Their recipients answer ``reply_factor`` times as often as usual and report them
    with ``report_probability``.
    """

    accounts: int = 3
    messages_per_minute: float = 60.0
    reply_factor: float = 0.2
    report_probability: float = 0.01

    def __post_init__(self) -> None:
        if self.accounts < 1 or self.messages_per_minute <= 0:
            raise ValueError("bots need at least one account and a positive rate")
        if not 0.0 <= self.report_probability <= 1.0 or self.reply_factor < 0:
            raise ValueError("report_probability must be in [0, 1], reply_factor >= 0")


# What a phase may not change: these shape the population (built once) or the traffic
# volume (the pacing of conversation starts), not the members' behaviour.
FIXED_FIELDS = (
    "account_shares",
    "mean_connections",
    "abusive_share",
    "diurnal_amplitude",
    "diurnal_peak_hour_utc",
    "default_rate",
    "events_per_conversation",
)


@dataclass(frozen=True)
class Phase:
    """From event time ``start_ts`` on, messages follow ``profile`` (and ``bots`` send)."""

    start_ts: float
    profile: SimulationProfile
    bots: BotSenders | None = None
