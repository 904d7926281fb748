"""Drive the simulator into a sink in compressed real time, bounded by count or duration.

Pacing follows event time: an event is sent when ``(ts - start) / speed`` wall seconds
have passed, so one simulated day lasts exactly ``86400 / speed`` wall seconds and "the
same time yesterday" is exactly that long ago. The event rate then varies as traffic
does (the time of day shapes it) around ``rate``, which the simulator's density is set
for. (Pacing by count instead would warp event time: at night, with fewer events per
event second, the clock would race, and a simulated day would not last a fixed time.)

A run may start with a warmup: ``warmup`` event-time seconds of history before the start,
sent as fast as possible, so that reply rates and latencies are at steady state when the
paced part begins. A ``scenario`` (producers.scenarios) puts an incident in the paced part.

``then_live`` keeps event time from ever running ahead of wall time (producers.pacing):
history is replayed at ``speed`` up to now, and from then on each event goes out when
the wall clock reaches its ``ts``. The events are the same either way; only when they
are sent differs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from producers.pacing import Pacing
from producers.profile import SimulationProfile
from producers.scenarios import INCIDENT_AFTER_SECONDS, build_scenario
from producers.simulator import Event
from producers.sinks import Sink

if TYPE_CHECKING:
    from streams.settings import Settings

log = logging.getLogger(__name__)

TICK_SECONDS = 0.05  # a paced run writes one chunk per tick
MAX_CHUNK = 5_000


@dataclass(frozen=True)
class ProduceReport:
    events_sent: int
    elapsed_seconds: float
    events_per_second: float
    first_ts: float | None  # event time of the first and last event sent
    last_ts: float | None
    cancelled: bool = False
    warmup_events: int = 0  # of events_sent, the warmup's (sent before pacing began)


ProgressCallback = Callable[[ProduceReport], None]


async def run_producer(
    settings: Settings,
    *,
    sink: Sink,
    events: int | None,
    duration: float | None,
    rate: float,
    speed: float,
    seed: int,
    start_ts: float | None,
    profile: SimulationProfile = SimulationProfile(),  # noqa: B008 - frozen, shared
    progress: ProgressCallback | None = None,
    members: int | None = None,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    log_interval: float = 5.0,
    scenario: str = "baseline",
    warmup: float = 0.0,
    incident_after: float = INCIDENT_AFTER_SECONDS,
    then_live: bool = False,
) -> ProduceReport:
    """Send ``events`` events (or for ``duration`` wall seconds, or until cancelled).

    ``rate`` is the mean events per wall second (0: as fast as possible); event time runs
    ``speed`` times wall time. ``warmup`` event-time
    seconds of history before ``start_ts`` go first, as fast as possible; ``events`` and
    ``duration`` count them too. ``scenario`` names a producers.scenarios scenario whose
    incident starts ``incident_after`` event seconds after ``start_ts``. ``then_live``:
    no event is sent before the wall clock reaches its ``ts`` (the warmup's included), so
    once event time has caught up with wall time it runs at 1x, and events then come at
    ``rate / speed`` per wall second (the simulator's density is unchanged). The sink is
    closed (flushed) before returning. Cancellation is a normal way to stop: the chunk in
    flight is finished, the sink flushed, and the report (``cancelled=True``) returned.
    """
    sent, warmup_sent, first_ts, last_ts, cancelled = 0, 0, None, None, False
    started = monotonic()
    last_log_at, last_log_sent = started, 0

    def report() -> ProduceReport:
        elapsed = monotonic() - started
        per_second = sent / elapsed if elapsed > 0 else 0.0
        return ProduceReport(
            sent, elapsed, per_second, first_ts, last_ts, cancelled, warmup_sent
        )

    try:
        if rate < 0 or (events is not None and events < 0) or warmup < 0:
            raise ValueError("rate, events and warmup must be >= 0")
        begin = clock() if start_ts is None else start_ts
        chosen = build_scenario(
            scenario, start_ts=begin, incident_after=incident_after, profile=profile
        )
        stream = chosen.simulator(
            seed=seed,
            start_ts=begin - warmup,
            rate=rate,
            speed=speed,
            members=settings.producer_members if members is None else members,
        ).events()
        if chosen.incident_start is not None:
            log.info("scenario %s: %s, from event time %.0f", chosen.name, chosen.summary,
                     chosen.incident_start)
        history, paced = _split_at(stream, begin)
        chunk = max(1, min(MAX_CHUNK, int(rate * TICK_SECONDS))) if rate > 0 else MAX_CHUNK
        parts = (  # (events, pacing, chunk size, is the warmup)
            (history, Pacing(begin - warmup, None, then_live), MAX_CHUNK, True),
            (paced, Pacing(begin, speed if rate > 0 else None, then_live), chunk, False),
        )
        caught_up = False
        for events_of_part, pacing, size, is_warmup in parts:
            part, part_started = _Lookahead(events_of_part), monotonic()
            is_paced = pacing.speed is not None or pacing.then_live
            while events is None or sent < events:
                now = monotonic()
                if duration is not None and now - started >= duration:
                    break
                upcoming = part.peek()
                if upcoming is None:
                    break  # the warmup's history is all sent
                if is_paced:  # a chunk goes out when its first event is due, never early
                    elapsed, wall = now - part_started, clock()
                    if not caught_up and pacing.holds_back(
                        upcoming["ts"], elapsed=elapsed, now=wall
                    ):
                        caught_up = True
                        log.info("event time has caught up with the wall clock after %.1f "
                                 "s: live (1x) from now on", now - started)
                    due = now + pacing.wait(upcoming["ts"], elapsed=elapsed, now=wall)
                    if duration is not None and due >= started + duration:
                        await asyncio.sleep(max(0.0, started + duration - monotonic()))
                        break
                    await asyncio.sleep(max(0.0, due - monotonic()))
                batch = part.take(
                    size if events is None else min(size, events - sent),
                    until_ts=pacing.latest_ts(clock()),
                )
                if not batch:
                    continue  # woken a little before the wall clock reached the event
                interrupted = await _write_whole(sink, batch)
                sent += len(batch)
                if is_warmup:
                    warmup_sent += len(batch)
                first_ts = batch[0]["ts"] if first_ts is None else first_ts
                last_ts = batch[-1]["ts"]
                if interrupted:
                    raise asyncio.CancelledError
                if progress is not None:
                    progress(report())
                now = monotonic()
                if now - last_log_at >= log_interval:
                    recent = (sent - last_log_sent) / (now - last_log_at)
                    log.info("sent %d events (%.0f/s)", sent, recent)
                    last_log_at, last_log_sent = now, sent
                if not is_paced:
                    await asyncio.sleep(0)  # let the sink's and the signals' tasks run
            if is_warmup and warmup_sent and last_ts is not None:
                log.info(
                    "warmup: sent %d events, %.0f of %.0f event-seconds of history, in %.1f s",
                    warmup_sent, last_ts - (begin - warmup), warmup, monotonic() - part_started,
                )
    except asyncio.CancelledError:
        cancelled = True
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        log.info("producer cancelled after %d events", sent)
    finally:
        await sink.close()
    return report()


def _split_at(stream: Iterator[Event], ts: float) -> tuple[Iterator[Event], Iterator[Event]]:
    """(the events before ``ts``, the rest): consume the first before the second."""
    held: list[Event] = []

    def before() -> Iterator[Event]:
        for event in stream:
            if event["ts"] >= ts:
                held.append(event)
                return
            yield event

    def after() -> Iterator[Event]:
        yield from held
        yield from stream

    return before(), after()


class _Lookahead:
    """An event stream whose next event can be looked at before it is taken."""

    def __init__(self, events: Iterator[Event]) -> None:
        self._events = events
        self._held: Event | None = None

    def peek(self) -> Event | None:
        if self._held is None:
            self._held = next(self._events, None)
        return self._held

    def take(self, count: int, until_ts: float = math.inf) -> list[Event]:
        """Up to ``count`` events, ending before the first one later than ``until_ts``."""
        taken: list[Event] = []
        while len(taken) < count:
            event = self.peek()
            if event is None or event["ts"] > until_ts:
                break
            taken.append(event)
            self._held = None
        return taken


async def _write_whole(sink: Sink, batch: list[Event]) -> bool:
    """Write a chunk; if cancelled meanwhile, finish the chunk and return True."""
    write = asyncio.ensure_future(sink.write_many(batch))
    try:
        await asyncio.shield(write)
    except asyncio.CancelledError:
        await write
        return True
    return False
