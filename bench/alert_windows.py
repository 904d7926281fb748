"""Per-window values of what the alerts watch, per simulator scenario (offline, no Kafka).

Runs the simulator (producers/scenarios.py) and recounts every 60 s event-time window
the way the worker defines it (docs/metrics.md): spam reports per 1k messages, reply
rate, InMail response rate, p95 first-reply latency (Prometheus' histogram_quantile over
the worker's buckets), blocks per 1k messages, the busiest sender and the senders the
velocity and spam_reports risk rules flag. Then it replays the alert rules of
deploy/prometheus_rules.py with the thresholds of prometheus/thresholds.yml on those
windows: how often each fires on the baseline, and how soon on each incident.

    .venv/bin/python -m bench.alert_windows            # about 4 minutes on 2 cores

The baseline runs ``--baseline-hours`` (48) after a ``--baseline-warmup-hours`` (24)
warmup: a day's cycle for the worst window, and "the same time a day earlier" for the
relative alerts. Each incident runs ``--hours`` (6) after a ``--warmup-hours`` (6)
warmup, from each ``--start`` (00:00 and 12:00 UTC: trough and peak traffic), with its
incident ``--incident-after`` (30) minutes in; its "day earlier" is the baseline
scenario from the same start (identical up to the incident). The producer's warmup
(``--warmup``) does the same for a live demo.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from deploy.prometheus_rules import ALERTS, load_thresholds, parse_duration
from producers.scenarios import SCENARIO_NAMES, SPECS, build_scenario

BOUNDS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800)
WINDOW = 60
DAY = 86_400 // WINDOW
VELOCITY, SPAM_REPORTS = 40, 3  # streams.settings defaults (RISK_*)

Series = dict[str, list[float | None]]


@dataclass
class Window:
    sent: int = 0
    started: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    replies: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS) + 1))
    spam: int = 0
    blocks: int = 0
    by_sender: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    reported: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def histogram_quantile(q: float, cumulative: Sequence[int]) -> float | None:
    """Prometheus' histogram_quantile over cumulative counts for (*BOUNDS, +Inf)."""
    total = cumulative[-1]
    if total == 0:
        return None
    rank = q * total
    for i, count in enumerate(cumulative):
        if count >= rank:
            if i == len(BOUNDS):  # in the +Inf bucket: the highest finite bound
                return float(BOUNDS[-1])
            lower = 0.0 if i == 0 else float(BOUNDS[i - 1])
            below = 0 if i == 0 else cumulative[i - 1]
            return lower + (BOUNDS[i] - lower) * (rank - below) / (count - below)
    return float(BOUNDS[-1])


def bucket_of(seconds: float) -> int:
    for i, bound in enumerate(BOUNDS):
        if seconds <= bound:
            return i
    return len(BOUNDS)


def recount(events: Iterable[dict], first: int, last: int) -> list[Window]:
    """Windows ``first`` .. ``last - 1`` (window indexes), with the conversation state of
    every event since the stream's start (the warmup included), as the worker keeps it."""
    windows = [Window() for _ in range(first, last)]
    conversations: dict[str, tuple[float, str, str]] = {}  # unanswered: ts, to, channel
    for e in events:
        w = int(e["ts"] // WINDOW)
        if w >= last:
            break
        win = windows[w - first] if w >= first else None
        kind = e["type"]
        if kind == "message_sent":
            cid = e["conversation_id"]
            if e["first_in_conversation"]:
                conversations[cid] = (e["ts"], e["recipient_id"], e["channel"])
            else:
                conv = conversations.get(cid)
                if conv is not None and e["sender_id"] == conv[1]:
                    del conversations[cid]  # answered: later messages are not first replies
                    if win is not None:
                        win.replies[conv[2]] += 1
                        win.buckets[bucket_of(max(0.0, e["ts"] - conv[0]))] += 1
            if win is not None:
                win.sent += 1
                win.by_sender[e["sender_id"]] += 1
                if e["first_in_conversation"]:
                    win.started[e["channel"]] += 1
        elif win is None:
            continue
        elif kind == "spam_reported":
            win.spam += 1
            win.reported[e["reported_id"]] += 1
        elif kind == "member_blocked":
            win.blocks += 1
    return windows


def series(windows: Sequence[Window]) -> Series:
    """Per-window values, in window order (None: no sample, as in Prometheus)."""
    out: Series = defaultdict(list)
    for win in windows:
        started, replies = sum(win.started.values()), sum(win.replies.values())
        cumulative = [sum(win.buckets[: i + 1]) for i in range(len(win.buckets))]
        inmail = win.started.get("inmail", 0)
        p95 = histogram_quantile(0.95, cumulative)
        out["messages"].append(win.sent)
        out["spam"].append(win.spam)
        out["spam_per_1k"].append(1000 * win.spam / win.sent if win.sent else None)
        out["reply_rate"].append(replies / started if started else None)
        out["inmail_rate"].append(win.replies.get("inmail", 0) / inmail if inmail else None)
        out["p95_latency_h"].append(None if p95 is None else p95 / 3600)
        out["blocks"].append(win.blocks)
        out["blocks_per_1k"].append(1000 * win.blocks / win.sent if win.sent else None)
        out["busiest_sender"].append(max(win.by_sender.values(), default=0))
        out["flagged_velocity"].append(sum(c >= VELOCITY for c in win.by_sender.values()))
        out["flagged_spam_reports"].append(
            sum(c >= SPAM_REPORTS for c in win.reported.values()))
    return out


def rolling(values: Sequence[float | None], n: int) -> list[float | None]:
    """avg_over_time over n windows: the mean of the last n windows' samples."""
    out: list[float | None] = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - n + 1) : i + 1] if v is not None]
        out.append(sum(chunk) / len(chunk) if chunk and i >= n - 1 else None)
    return out


def rolling_ratio(num: Sequence[float | None], den: Sequence[float | None], n: int,
                  scale: float = 1.0) -> list[float | None]:
    """scale * sum(num over n windows) / sum(den over n windows)."""
    a, b = rolling(num, n), rolling(den, n)
    return [scale * x / y if x is not None and y else None for x, y in zip(a, b)]


def divide(a: Sequence[float | None], b: Sequence[float | None]) -> list[float | None]:
    return [x / y if x is not None and y else None for x, y in zip(a, b)]


def describe(values: Iterable[float | None]) -> str:
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return "no samples"

    def q(p: float) -> float:
        return xs[min(len(xs) - 1, int(p * (len(xs) - 1) + 0.5))]

    return (f"n={len(xs):5d} min={xs[0]:8.3f} p1={q(.01):8.3f} med={q(.5):8.3f} "
            f"p99={q(.99):8.3f} max={xs[-1]:8.3f} mean={statistics.fmean(xs):8.3f}")


# --- the alert rules, replayed on windows --------------------------------------------------
def _windows(duration: str | None) -> int:
    return max(1, parse_duration(duration) // WINDOW) if duration else 1


def alert_value(alert: str, now: Series, before: Series, n: int, reason: str = ""
                ) -> list[float | None]:
    """What each alert's expression compares with its threshold, per window (``before``
    is the same windows a day earlier)."""
    if alert == "MessagingSpamReportsHigh":
        return rolling(now["spam_per_1k"], n)
    if alert == "MessagingBlocksSurge":
        return rolling_ratio(now["blocks"], now["messages"], n, 1000)
    if alert == "MessagingFlaggedSendersSurge":
        return rolling(now[f"flagged_{reason}"], n)
    metric = {"MessagingReplyRateDrop": "reply_rate",
              "MessagingInMailResponseRateLow": "inmail_rate",
              "MessagingFirstReplyLatencyHigh": "p95_latency_h"}[alert]
    return divide(rolling(now[metric], n), rolling(before[metric], n))


OPS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda v, t: v > t, ">=": lambda v, t: v >= t, "<": lambda v, t: v < t}


def replay(now: Series, before: Series, thresholds: dict[str, float]
           ) -> dict[tuple[str, str, str], list[bool]]:
    """(alert, severity, reason) -> firing per window, with the rule's range and for:."""
    out = {}
    for spec in ALERTS:
        if spec.threshold is None or spec.alert in ("MessagingInvalidEventsHigh",
                                                    "MessagingConsumerLagHigh"):
            continue  # pipeline health: nothing the simulator varies
        op = next(o for o in (">=", ">", "<") if f"{o} $threshold" in spec.expr)
        hold = _windows(spec.for_)
        reasons = ("velocity", "spam_reports") if "reason" in spec.expr else ("",)
        for reason in reasons:
            values = alert_value(spec.alert, now, before, _windows(spec.range), reason)
            true = [v is not None and OPS[op](v, thresholds[spec.threshold]) for v in values]
            firing = [i >= hold and all(true[i - hold : i + 1]) for i in range(len(true))]
            out[(spec.alert, spec.severity, reason)] = firing
    return out


# --- runs ----------------------------------------------------------------------------------
def run(name: str, *, start: float, warmup_hours: float, hours: float, rate: float,
        speed: float, seed: int, members: int, incident_after: float) -> Series:
    scenario = build_scenario(name, start_ts=start, incident_after=incident_after)
    sim = scenario.simulator(seed=seed, start_ts=start - warmup_hours * 3600, rate=rate,
                             speed=speed, members=members)
    first = int(start // WINDOW)
    return series(recount(sim.events(), first, first + int(hours * 60)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="*", default=list(SCENARIO_NAMES[1:]))
    parser.add_argument("--start", action="append", default=None,
                        help="ISO start of the incident runs (default 00:00 and 12:00 UTC)")
    parser.add_argument("--warmup-hours", type=float, default=6.0)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--baseline-warmup-hours", type=float, default=24.0)
    parser.add_argument("--baseline-hours", type=float, default=48.0)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--speed", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--incident-after", type=float, default=30.0, help="minutes")
    args = parser.parse_args(argv)
    thresholds = load_thresholds()
    starts = [datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp()
              for s in (args.start or ["2026-01-02T00:00:00", "2026-01-02T12:00:00"])]
    common = {"rate": args.rate, "speed": args.speed, "seed": args.seed,
              "members": args.members, "incident_after": args.incident_after * 60}

    t0 = time.perf_counter()
    base = run("baseline", start=min(starts), warmup_hours=args.baseline_warmup_hours,
               hours=args.baseline_hours, **common)
    print(f"## baseline: {args.baseline_hours:g} h from "
          f"{datetime.fromtimestamp(min(starts), UTC):%Y-%m-%d %H:%M} UTC after a "
          f"{args.baseline_warmup_hours:g} h warmup ({time.perf_counter() - t0:.0f} s)")
    for metric in ("messages", "spam_per_1k", "blocks_per_1k", "busiest_sender",
                   "flagged_velocity", "flagged_spam_reports", "reply_rate", "inmail_rate",
                   "p95_latency_h"):
        print(f"  {metric:21s} 1 window  {describe(base[metric])}")
    day2 = {k: v[DAY:] for k, v in base.items()}
    day1 = {k: v[:-DAY] for k, v in base.items()}
    for spec in ALERTS:
        if spec.threshold is None or spec.range is None or "offset" in spec.expr:
            continue
        if spec.alert == "MessagingInvalidEventsHigh" or spec.severity == "critical":
            continue  # (the critical spam rule watches the same value as the warning)
        for reason in (("velocity", "spam_reports") if "reason" in spec.expr else ("",)):
            values = alert_value(spec.alert, base, base, _windows(spec.range), reason)
            print(f"  {spec.alert} {reason} [{spec.range}]: {describe(values)}")
    for spec in ALERTS:
        if "offset" in spec.expr:
            values = alert_value(spec.alert, day2, day1, _windows(spec.range))
            print(f"  {spec.alert} day 2 / day 1 [{spec.range}]: {describe(values)}")
    hourly = {m: [statistics.median(v for i, v in enumerate(rolling(base[m], 30))
                                    if v is not None and (i // 60) % 24 == h)
                  for h in range(24)] for m in ("reply_rate", "inmail_rate", "p95_latency_h")}
    for metric, medians in hourly.items():
        print(f"  {metric} by hour of day (UTC, median of 30-min averages): "
              + " ".join(f"{h:02d}:{m:.2f}" for h, m in enumerate(medians)))
    print("  alerts firing on the baseline (windows of {}):".format(len(day2["messages"])))
    for key, firing in replay(day2, day1, thresholds).items():
        print(f"    {' '.join(k for k in key if k):45s} {sum(firing):4d}")
    sys.stdout.flush()

    skip = int(args.incident_after)
    for start in starts:
        label = f"{datetime.fromtimestamp(start, UTC):%H:%M}"
        ref = run("baseline", start=start, warmup_hours=args.warmup_hours, hours=args.hours,
                  **common)
        for name in args.scenarios:
            t0 = time.perf_counter()
            now = run(name, start=start, warmup_hours=args.warmup_hours, hours=args.hours,
                      **common)
            print(f"## {name} from {label} UTC, incident at +{skip} min, "
                  f"{args.hours:g} h ({time.perf_counter() - t0:.0f} s); "
                  f"expected: {', '.join(SPECS[name].alerts) or 'none'}")
            settled = slice(skip + 60, None)  # from an hour into the incident
            seen: set[tuple[str, str]] = set()
            for metric in ("spam_per_1k", "blocks_per_1k", "busiest_sender", "flagged_velocity",
                           "flagged_spam_reports"):
                print(f"  {metric:21s} 1 window  {describe(now[metric][settled])}")
            for spec in ALERTS:
                if spec.threshold is None or (spec.alert, "warning") in seen or (
                        spec.alert in ("MessagingInvalidEventsHigh",
                                       "MessagingConsumerLagHigh")):
                    continue
                seen.add((spec.alert, spec.severity))
                for reason in (("velocity", "spam_reports") if "reason" in spec.expr
                               else ("",)):
                    values = alert_value(spec.alert, now, ref, _windows(spec.range), reason)
                    print(f"  {spec.alert} {reason} [{spec.range}]: "
                          f"{describe(values[settled])}")
            for key, firing in replay(now, ref, thresholds).items():
                during = firing[skip:]
                first = next((i for i, f in enumerate(during) if f), None)
                when = "never" if first is None else f"after {first} min"
                print(f"    {' '.join(k for k in key if k):45s} fires {when:>15s}; "
                      f"{sum(during) / len(during):5.0%} of the incident's windows")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
