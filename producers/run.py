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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

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
) -> ProduceReport:
    """Send ``events`` events (or for ``duration`` wall seconds, or until cancelled).

    ``rate`` is the mean events per wall second (0: as fast as possible); event time runs
    ``speed`` times wall time. ``warmup`` event-time
    seconds of history before ``start_ts`` go first, as fast as possible; ``events`` and
    ``duration`` count them too. ``scenario`` names a producers.scenarios scenario whose
    incident starts ``incident_after`` event seconds after ``start_ts``. The sink is
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
        # (events, whether paced, is the warmup)
        for part, is_paced, is_warmup in ((history, False, True), (paced, rate > 0, False)):
            part_started = monotonic()
            size = MAX_CHUNK if is_warmup else chunk
            while events is None or sent < events:
                now = monotonic()
                if duration is not None and now - started >= duration:
                    break
                batch: list[Event] = list(
                    islice(part, size if events is None else min(size, events - sent))
                )
                if not batch:
                    break  # the warmup's history is all sent
                if is_paced:  # a chunk goes out when its first event is due, never early
                    due = part_started + (batch[0]["ts"] - begin) / speed
                    if duration is not None and due >= started + duration:
                        await asyncio.sleep(max(0.0, started + duration - monotonic()))
                        break
                    await asyncio.sleep(max(0.0, due - monotonic()))
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


async def _write_whole(sink: Sink, batch: list[Event]) -> bool:
    """Write a chunk; if cancelled meanwhile, finish the chunk and return True."""
    write = asyncio.ensure_future(sink.write_many(batch))
    try:
        await asyncio.shield(write)
    except asyncio.CancelledError:
        await write
        return True
    return False
