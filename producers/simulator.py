"""The synthetic messaging simulator: a deterministic, infinite stream of events.

Conversation starts arrive as a Poisson process in event time (mean inter-arrival
``speed * events_per_conversation / rate`` seconds, so that events come at ``rate`` per
wall second while event time runs ``speed`` times faster; shaped by the time of day);
everything that follows from a message -- the recipient reading it, replying, the
back-and-forth, spam reports and blocks -- is scheduled on a heap and merged in ``ts``
order. The output is a pure
function of ``(profile, seed, start_ts, rate, speed, members, phases)``: all randomness
comes from ``random.Random`` instances seeded from ``seed``, ids come from counters.

``phases`` (see ``producers.scenarios``) change the members' behaviour from a given
event time on: what the recipient of a message does about it follows the profile in
force when the message was sent, and a phase may add bot accounts. Nothing draws a
random number for a phase before it starts, so the stream up to a phase's start is
exactly the stream without it.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Iterator, Mapping
from heapq import heappop, heappush
from typing import Any

from producers.population import Population, build_population, starter_pools
from producers.profile import CHANNELS, FIXED_FIELDS, Phase, SimulationProfile

Event = dict[str, Any]
SCHEMA_VERSION = 2  # the InMail answer (inmail_answered) is new in version 2

_MESSAGE, _READ, _REPORT, _BLOCK, _ANSWER = 0, 1, 2, 3, 4
_TWO_PI = 2.0 * math.pi


class _Sampler:
    """Draw a category with given weights from one uniform number (bisect on the CDF)."""

    __slots__ = ("cdf", "items")

    def __init__(self, shares: Mapping[str, float]) -> None:
        total = sum(shares.values())
        self.items = list(shares)
        acc = 0.0
        self.cdf: list[float] = []
        for weight in shares.values():
            acc += weight / total
            self.cdf.append(acc)
        self.cdf[-1] = 1.0  # random() < 1.0, so the index is always in range

    def __call__(self, u: float) -> str:
        return self.items[bisect_right(self.cdf, u)]


_INF = math.inf
_BOT_CHANNEL, _BOT_ENTRY_POINT, _BOT_PLATFORM = "connection", "search", "web"


class _Conversation:
    __slots__ = ("channel", "cid", "content")

    def __init__(self, cid: str, channel: str, content: tuple[_Sampler, _Sampler]) -> None:
        self.cid = cid
        self.channel = channel
        self.content = content  # (starter side, other side)


def _log_normal(median_sigma: tuple[float, float]) -> tuple[float, float]:
    median, sigma = median_sigma
    return math.log(median), sigma


class Simulator:
    """``Simulator(profile, seed=..., start_ts=..., rate=..., speed=..., members=...)``.

    ``phases`` (optional, by ``start_ts``) switch to another profile, and add bot
    senders, from their start on; ``profile`` holds before the first one.
    ``events()`` may be called again: each call replays the same sequence.
    """

    def __init__(
        self,
        profile: SimulationProfile,
        *,
        seed: int,
        start_ts: float,
        rate: float,
        speed: float,
        members: int,
        phases: tuple[Phase, ...] = (),
    ) -> None:
        if rate < 0 or speed <= 0:
            raise ValueError("rate must be >= 0 and speed > 0")
        if list(phases) != sorted(phases, key=lambda phase: phase.start_ts):
            raise ValueError("phases must be ordered by start_ts")
        for phase in phases:
            changed = [
                name for name in FIXED_FIELDS
                if getattr(phase.profile, name) != getattr(profile, name)
            ]
            if changed:
                raise ValueError(f"a phase cannot change {changed} (population and traffic)")
        self.profile = profile
        self.phases = tuple(phases)
        self.start_ts = float(start_ts)
        # A conversation start brings ~events_per_conversation events in all, so starts
        # are spaced for `rate` events per wall second at `speed` event s per wall s.
        wall_rate = rate if rate > 0 else profile.default_rate
        self.mean_interarrival = speed * profile.events_per_conversation / wall_rate
        rng = random.Random(seed)
        self.population: Population = build_population(members, profile, rng)
        self.run_id = f"{rng.getrandbits(32):08x}"
        self._events_seed = rng.getrandbits(64)

    def events(self) -> Iterator[Event]:
        """The infinite, ts-ordered event stream (bound it with ``islice`` or by ts)."""
        return self._generate(random.Random(self._events_seed))

    def _bot_accounts(self, index: int, count: int) -> list[int]:
        """Phase ``index``'s bots: ordinary members' accounts, drawn apart from the stream."""
        pop = self.population
        candidates = [
            i for i, t in enumerate(pop.sender_types)
            if t in ("member", "premium") and not pop.abusive[i]
        ]
        picker = random.Random(f"bots-{self._events_seed}-{index}")
        return sorted(picker.sample(candidates, min(count, len(candidates))))

    def _generate(self, rng: random.Random) -> Iterator[Event]:
        base, pop = self.profile, self.population
        rand, gauss, exp, log, cos = rng.random, rng.gauss, math.exp, math.log, math.cos
        ids, types, platforms, abusive = pop.ids, pop.sender_types, pop.platforms, pop.abusive
        connections, recipients = pop.connections, pop.recipients
        n_recipients = len(recipients)
        amp, peak = base.diurnal_amplitude, base.diurnal_peak_hour_utc * 3600.0
        peak_gap = self.mean_interarrival / (1.0 + amp)  # inter-arrival at the daily peak
        run = self.run_id
        heap: list[tuple[Any, ...]] = []
        seq = n_events = n_convs = n_msgs = 0
        # the profile in force: phase 0 is ``profile`` itself, applied before any event
        phases = (Phase(-_INF, base), *self.phases)

        def platform_of(account: int) -> str:
            return platforms[account] if rand() < sticky else pick_platform(rand())

        def report(
            ts: float, conv: _Conversation, mid: str, recipient: int, sender: int,
            reasons: _Sampler,
        ) -> None:
            """The recipient reads message ``mid``, reports it, and may block the sender."""
            nonlocal seq
            t = ts + min(exp(gauss(rd_mu, rd_sigma)), cap)
            heappush(heap, (t, seq, _READ, conv.cid, mid, recipient))
            t += exp(gauss(rp_mu, rp_sigma))
            why = reasons(rand())
            heappush(heap, (t, seq + 1, _REPORT, conv.cid, mid, recipient, sender, why))
            seq += 2
            if rand() < block_after_report:
                t += exp(gauss(bl_mu, bl_sigma))
                heappush(heap, (t, seq, _BLOCK, conv.cid, recipient, sender))
                seq += 1

        def answer(
            ts: float, conv: _Conversation, sender: int, recipient: int, k: int, mid: str,
            p: float, mu: float, sigma: float, delay: float,
        ) -> None:
            """Reply to message ``k`` with probability p after ``delay`` + logN(mu, sigma)
            seconds, or read it."""
            nonlocal seq
            if rand() < p:
                latency = min(exp(gauss(mu, sigma)), cap) + delay
                heappush(heap, (ts + latency * rand(), seq, _READ, conv.cid, mid, recipient))
                heappush(heap, (ts + latency, seq + 1, _MESSAGE, conv, recipient, sender, k + 1))
                seq += 2
            elif rand() < read_p:
                t = ts + min(exp(gauss(rd_mu, rd_sigma)), cap)
                heappush(heap, (t, seq, _READ, conv.cid, mid, recipient))
                seq += 1

        def schedule(
            ts: float, conv: _Conversation, sender: int, recipient: int, k: int, mid: str
        ) -> None:
            """What the recipient does about message ``k`` (0 = the opener) sent at ts."""
            nonlocal seq
            if k == 0:
                bad = abusive[sender]
                u = rand()
                if u < (p_report_abusive if bad else p_report_normal):
                    report(ts, conv, mid, recipient, sender,
                           reasons_abusive if bad else reasons_normal)
                    return
                if rand() < block_p:
                    t = ts + min(exp(gauss(rd_mu, rd_sigma)), cap)
                    heappush(heap, (t, seq, _READ, conv.cid, mid, recipient))
                    t += exp(gauss(bl_mu, bl_sigma))
                    heappush(heap, (t, seq + 1, _BLOCK, conv.cid, recipient, sender))
                    seq += 2
                    return
                p = reply_p[conv.channel] * (abuse_reply if bad else 1.0)
                mu, sigma = first_latency[conv.channel]
                if conv.channel == "inmail":  # one draw: reply or not, as for the others
                    replies = rand() < p
                    if not replies and rand() < inmail_answer_p:
                        # no reply, but a click: "Yes, interested" or "No thanks"; read first
                        latency = min(exp(gauss(an_mu, an_sigma)), cap) + first_delay
                        heappush(heap, (ts + latency * rand(), seq, _READ, conv.cid, mid,
                                        recipient))
                        heappush(heap, (ts + latency, seq + 1, _ANSWER, conv.cid, mid,
                                        recipient, pick_answer(rand())))
                        seq += 2
                        return
                    p = 1.0 if replies else 0.0
                answer(ts, conv, sender, recipient, 0, mid, p, mu, sigma, first_delay)
            else:
                p = followup_p if k < last_k else 0.0
                answer(ts, conv, sender, recipient, k, mid, p, fu_mu, fu_sigma, 0.0)

        def schedule_bot(
            ts: float, conv: _Conversation, sender: int, recipient: int, mid: str
        ) -> None:
            """What a stranger does about a bot's opener: mostly nothing, now and then report."""
            if rand() < bot_report_p:
                report(ts, conv, mid, recipient, sender, reasons_abusive)
                return
            mu, sigma = first_latency[conv.channel]
            answer(ts, conv, sender, recipient, 0, mid, reply_p[conv.channel] * bot_reply, mu,
                   sigma, first_delay)

        def next_start(t: float) -> float:
            while True:  # thinning: candidates at the peak rate, kept by the day's shape
                t -= log(1.0 - rand()) * peak_gap
                if rand() * (1.0 + amp) <= 1.0 + amp * cos(_TWO_PI * (t - peak) / 86400.0):
                    return t

        t_start = next_start(self.start_ts)
        for index, phase in enumerate(phases):  # phase 0 is ``profile``, before any event
            switch_at = phases[index + 1].start_ts if index + 1 < len(phases) else _INF
            prof = phase.profile
            pick_type = _Sampler({t: s for t, s in prof.starter_shares.items() if s > 0})
            pools = (
                pop.starter_pool if prof.abusive_activity == base.abusive_activity
                else starter_pools(types, abusive, prof.abusive_activity)
            )
            pick_channel = {t: _Sampler(s) for t, s in prof.channel_given_sender.items()}
            pick_entry = {c: _Sampler(prof.entry_point_given_channel[c]) for c in CHANNELS}
            content = {c: _Sampler(prof.content_given_channel[c]) for c in CHANNELS}
            content_sides = {c: (content[c], content[c]) for c in CHANNELS}
            content_sides["sponsored"] = (content["sponsored"], content["connection"])
            pick_platform = _Sampler(prof.platform_shares)
            sticky = prof.platform_stickiness
            reply_p = prof.reply_probability
            first_latency = {c: _log_normal(prof.first_reply_latency[c]) for c in CHANNELS}
            first_delay = prof.first_reply_delay
            inmail_answer_p = prof.inmail_answer_probability
            pick_answer = _Sampler(prof.inmail_answers)
            an_mu, an_sigma = _log_normal(prof.inmail_answer_latency)
            reply_failure = prof.reply_failure_probability
            fu_mu, fu_sigma = _log_normal(prof.followup_latency)
            rd_mu, rd_sigma = _log_normal(prof.read_delay)
            rp_mu, rp_sigma = _log_normal(prof.report_delay)
            bl_mu, bl_sigma = _log_normal(prof.block_delay)
            cap = prof.max_latency_seconds
            followup_p = prof.followup_probability
            last_k = prof.max_messages_per_conversation - 1
            read_p, abuse_reply = prof.read_probability, prof.abusive_reply_factor
            p_report_normal = prof.spam_report_probability["normal"]
            p_report_abusive = prof.spam_report_probability["abusive"]
            reasons_normal = _Sampler(prof.report_reasons["normal"])
            reasons_abusive = _Sampler(prof.report_reasons["abusive"])
            block_after_report = prof.block_after_report_probability
            block_p = prof.block_probability
            bots = phase.bots  # and the phase's bots, if any: their first message
            bot_ids = [] if bots is None else self._bot_accounts(index, bots.accounts)
            bot_report_p = bots.report_probability if bots else 0.0
            bot_reply = bots.reply_factor if bots else 0.0
            bot_gap = 60.0 / (bots.messages_per_minute * len(bot_ids)) if bots else _INF
            t_bot = phase.start_ts - log(1.0 - rand()) * bot_gap if bots else _INF
            t_special = min(switch_at, t_bot)  # the next phase switch or bot message
            while True:
                if heap and heap[0][0] <= t_start:
                    if heap[0][0] < t_special:
                        item = heappop(heap)
                        ts, kind = item[0], item[2]
                        if kind == _MESSAGE and reply_failure and rand() < reply_failure:
                            continue  # the reply failed to send; the member gives up
                        n_events += 1
                        if kind == _MESSAGE:
                            conv, sender, recipient, k = item[3:]
                            n_msgs += 1
                            mid = f"msg-{run}-{n_msgs}"
                            yield {
                                "event_id": f"e-{run}-{n_events}",
                                "type": "message_sent",
                                "ts": round(ts, 3),
                                "conversation_id": conv.cid,
                                "schema_version": SCHEMA_VERSION,
                                "message_id": mid,
                                "sender_id": ids[sender],
                                "recipient_id": ids[recipient],
                                "sender_type": types[sender],
                                "channel": conv.channel,
                                "content_type": conv.content[k & 1](rand()),
                                "platform": platform_of(sender),
                                "entry_point": "inbox",
                                "first_in_conversation": False,
                            }
                            schedule(ts, conv, sender, recipient, k, mid)
                        elif kind == _READ:
                            cid, mid, reader = item[3:]
                            yield {
                                "event_id": f"e-{run}-{n_events}",
                                "type": "message_read",
                                "ts": round(ts, 3),
                                "conversation_id": cid,
                                "schema_version": SCHEMA_VERSION,
                                "message_id": mid,
                                "reader_id": ids[reader],
                                "platform": platform_of(reader),
                            }
                        elif kind == _REPORT:
                            cid, mid, reporter, reported, reason = item[3:]
                            yield {
                                "event_id": f"e-{run}-{n_events}",
                                "type": "spam_reported",
                                "ts": round(ts, 3),
                                "conversation_id": cid,
                                "schema_version": SCHEMA_VERSION,
                                "message_id": mid,
                                "reporter_id": ids[reporter],
                                "reported_id": ids[reported],
                                "reason": reason,
                                "platform": platform_of(reporter),
                            }
                        elif kind == _ANSWER:
                            cid, mid, responder, answer_kind = item[3:]
                            yield {
                                "event_id": f"e-{run}-{n_events}",
                                "type": "inmail_answered",
                                "ts": round(ts, 3),
                                "conversation_id": cid,
                                "schema_version": SCHEMA_VERSION,
                                "message_id": mid,
                                "responder_id": ids[responder],
                                "answer": answer_kind,
                                "platform": platform_of(responder),
                            }
                        else:
                            cid, blocker, blocked = item[3:]
                            yield {
                                "event_id": f"e-{run}-{n_events}",
                                "type": "member_blocked",
                                "ts": round(ts, 3),
                                "conversation_id": cid,
                                "schema_version": SCHEMA_VERSION,
                                "blocker_id": ids[blocker],
                                "blocked_id": ids[blocked],
                                "platform": platform_of(blocker),
                            }
                        continue
                elif t_start < t_special:
                    ts = t_start
                    t_start = next_start(ts)
                    pool = pools[pick_type(rand())]
                    sender = pool[int(rand() * len(pool))]
                    channel = pick_channel[types[sender]](rand())
                    friends = connections[sender] if channel == "connection" else None
                    if friends:
                        recipient = friends[int(rand() * len(friends))]
                    else:
                        recipient = sender
                        while recipient == sender:
                            recipient = recipients[int(rand() * n_recipients)]
                    n_convs += 1
                    n_msgs += 1
                    n_events += 1
                    conv = _Conversation(f"c-{run}-{n_convs}", channel, content_sides[channel])
                    mid = f"msg-{run}-{n_msgs}"
                    yield {
                        "event_id": f"e-{run}-{n_events}",
                        "type": "message_sent",
                        "ts": round(ts, 3),
                        "conversation_id": conv.cid,
                        "schema_version": SCHEMA_VERSION,
                        "message_id": mid,
                        "sender_id": ids[sender],
                        "recipient_id": ids[recipient],
                        "sender_type": types[sender],
                        "channel": channel,
                        "content_type": conv.content[0](rand()),
                        "platform": platform_of(sender),
                        "entry_point": pick_entry[channel](rand()),
                        "first_in_conversation": True,
                    }
                    schedule(ts, conv, sender, recipient, 0, mid)
                    continue
                # the next thing to happen is a phase switch or a bot's message
                if switch_at <= t_bot:
                    break  # on to the next phase
                ts = t_bot
                t_bot = ts - log(1.0 - rand()) * bot_gap
                sender = bot_ids[int(rand() * len(bot_ids))]
                recipient = sender
                while recipient == sender:
                    recipient = recipients[int(rand() * n_recipients)]
                n_convs += 1
                n_msgs += 1
                n_events += 1
                conv = _Conversation(f"c-{run}-{n_convs}", _BOT_CHANNEL,
                                     content_sides[_BOT_CHANNEL])
                mid = f"msg-{run}-{n_msgs}"
                yield {
                    "event_id": f"e-{run}-{n_events}",
                    "type": "message_sent",
                    "ts": round(ts, 3),
                    "conversation_id": conv.cid,
                    "schema_version": SCHEMA_VERSION,
                    "message_id": mid,
                    "sender_id": ids[sender],
                    "recipient_id": ids[recipient],
                    "sender_type": types[sender],
                    "channel": _BOT_CHANNEL,
                    "content_type": conv.content[0](rand()),
                    "platform": _BOT_PLATFORM,
                    "entry_point": _BOT_ENTRY_POINT,
                    "first_in_conversation": True,
                }
                schedule_bot(ts, conv, sender, recipient, mid)
                t_special = min(switch_at, t_bot)
