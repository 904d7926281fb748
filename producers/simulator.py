"""The synthetic messaging simulator: a deterministic, infinite stream of events.

Conversation starts arrive as a Poisson process in event time (mean inter-arrival
``speed * events_per_conversation / rate`` seconds, so that events come at ``rate`` per
wall second while event time runs ``speed`` times faster; shaped by the time of day);
everything that follows from a message -- the recipient reading it, replying, the
back-and-forth, spam reports and blocks -- is scheduled on a heap and merged in ``ts``
order. The output is a pure
function of ``(profile, seed, start_ts, rate, speed, members)``: all randomness comes
from ``random.Random`` instances seeded from ``seed``, ids come from counters.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Iterator, Mapping
from heapq import heappop, heappush
from typing import Any

from producers.population import Population, build_population
from producers.profile import CHANNELS, SimulationProfile

Event = dict[str, Any]
SCHEMA_VERSION = 1

_MESSAGE, _READ, _REPORT, _BLOCK = 0, 1, 2, 3
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
    ) -> None:
        if rate < 0 or speed <= 0:
            raise ValueError("rate must be >= 0 and speed > 0")
        self.profile = profile
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

    def _generate(self, rng: random.Random) -> Iterator[Event]:
        prof, pop = self.profile, self.population
        rand, gauss, exp, log, cos = rng.random, rng.gauss, math.exp, math.log, math.cos
        ids, types, platforms, abusive = pop.ids, pop.sender_types, pop.platforms, pop.abusive
        connections, recipients = pop.connections, pop.recipients
        n_recipients = len(recipients)
        pick_type = _Sampler({t: s for t, s in prof.starter_shares.items() if s > 0})
        pools = pop.starter_pool
        pick_channel = {t: _Sampler(s) for t, s in prof.channel_given_sender.items()}
        pick_entry = {c: _Sampler(prof.entry_point_given_channel[c]) for c in CHANNELS}
        content = {c: _Sampler(prof.content_given_channel[c]) for c in CHANNELS}
        content_sides = {c: (content[c], content[c]) for c in CHANNELS}
        content_sides["sponsored"] = (content["sponsored"], content["connection"])
        pick_platform = _Sampler(prof.platform_shares)
        sticky = prof.platform_stickiness
        reply_p = prof.reply_probability
        first_latency = {c: _log_normal(prof.first_reply_latency[c]) for c in CHANNELS}
        fu_mu, fu_sigma = _log_normal(prof.followup_latency)
        rd_mu, rd_sigma = _log_normal(prof.read_delay)
        rp_mu, rp_sigma = _log_normal(prof.report_delay)
        bl_mu, bl_sigma = _log_normal(prof.block_delay)
        cap = prof.max_latency_seconds
        followup_p, last_k = prof.followup_probability, prof.max_messages_per_conversation - 1
        read_p, abuse_reply = prof.read_probability, prof.abusive_reply_factor
        report_p = prof.spam_report_probability
        p_report_normal, p_report_abusive = report_p["normal"], report_p["abusive"]
        reasons_normal = _Sampler(prof.report_reasons["normal"])
        reasons_abusive = _Sampler(prof.report_reasons["abusive"])
        block_after_report, block_p = prof.block_after_report_probability, prof.block_probability
        amp, peak = prof.diurnal_amplitude, prof.diurnal_peak_hour_utc * 3600.0
        peak_gap = self.mean_interarrival / (1.0 + amp)  # inter-arrival at the daily peak
        run = self.run_id
        heap: list[tuple[Any, ...]] = []
        seq = n_events = n_convs = n_msgs = 0

        def platform_of(account: int) -> str:
            return platforms[account] if rand() < sticky else pick_platform(rand())

        def schedule(
            ts: float, conv: _Conversation, sender: int, recipient: int, k: int, mid: str
        ) -> None:
            """What the recipient does about message ``k`` (0 = the opener) sent at ts."""
            nonlocal seq
            if k == 0:
                bad = abusive[sender]
                u = rand()
                if u < (p_report_abusive if bad else p_report_normal):
                    t = ts + min(exp(gauss(rd_mu, rd_sigma)), cap)
                    heappush(heap, (t, seq, _READ, conv.cid, mid, recipient))
                    t += exp(gauss(rp_mu, rp_sigma))
                    why = (reasons_abusive if bad else reasons_normal)(rand())
                    heappush(heap, (t, seq + 1, _REPORT, conv.cid, mid, recipient, sender, why))
                    seq += 2
                    if rand() < block_after_report:
                        t += exp(gauss(bl_mu, bl_sigma))
                        heappush(heap, (t, seq, _BLOCK, conv.cid, recipient, sender))
                        seq += 1
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
            else:
                p = followup_p if k < last_k else 0.0
                mu, sigma = fu_mu, fu_sigma
            if rand() < p:
                latency = min(exp(gauss(mu, sigma)), cap)
                heappush(heap, (ts + latency * rand(), seq, _READ, conv.cid, mid, recipient))
                heappush(heap, (ts + latency, seq + 1, _MESSAGE, conv, recipient, sender, k + 1))
                seq += 2
            elif rand() < read_p:
                t = ts + min(exp(gauss(rd_mu, rd_sigma)), cap)
                heappush(heap, (t, seq, _READ, conv.cid, mid, recipient))
                seq += 1

        def next_start(t: float) -> float:
            while True:  # thinning: candidates at the peak rate, kept by the day's shape
                t -= log(1.0 - rand()) * peak_gap
                if rand() * (1.0 + amp) <= 1.0 + amp * cos(_TWO_PI * (t - peak) / 86400.0):
                    return t

        t_start = next_start(self.start_ts)
        while True:
            if heap and heap[0][0] <= t_start:
                item = heappop(heap)
                ts, kind = item[0], item[2]
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
                        "platform": platforms[sender] if rand() < sticky else pick_platform(rand()),
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
                        "platform": platforms[reader] if rand() < sticky else pick_platform(rand()),
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
                "platform": platforms[sender] if rand() < sticky else pick_platform(rand()),
                "entry_point": pick_entry[channel](rand()),
                "first_in_conversation": True,
            }
            schedule(ts, conv, sender, recipient, 0, mid)
