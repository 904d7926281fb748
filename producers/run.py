"""Drive the simulator into a sink at a wall-clock rate, bounded by count or duration."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

from producers.profile import SimulationProfile
from producers.simulator import Event, Simulator
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
) -> ProduceReport:
    """Send ``events`` events (or for ``duration`` wall seconds, or until cancelled).

    ``rate`` is events per wall second (0: as fast as possible). The sink is closed
    (flushed) before returning. Cancellation is a normal way to stop: the chunk in
    flight is finished, the sink flushed, and the report (``cancelled=True``) returned.
    """
    sent, first_ts, last_ts, cancelled = 0, None, None, False
    started = monotonic()
    last_log_at, last_log_sent = started, 0

    def report() -> ProduceReport:
        elapsed = monotonic() - started
        per_second = sent / elapsed if elapsed > 0 else 0.0
        return ProduceReport(sent, elapsed, per_second, first_ts, last_ts, cancelled)

    try:
        if rate < 0 or (events is not None and events < 0):
            raise ValueError("rate and events must be >= 0")
        stream = Simulator(
            profile,
            seed=seed,
            start_ts=clock() if start_ts is None else start_ts,
            rate=rate,
            speed=speed,
            members=settings.producer_members if members is None else members,
        ).events()
        chunk = max(1, min(MAX_CHUNK, int(rate * TICK_SECONDS))) if rate > 0 else MAX_CHUNK
        while events is None or sent < events:
            now = monotonic()
            if duration is not None and now - started >= duration:
                break
            size = chunk if events is None else min(chunk, events - sent)
            batch: list[Event] = list(islice(stream, size))
            interrupted = await _write_whole(sink, batch)
            sent += len(batch)
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
            delay = started + sent / rate - now if rate > 0 else 0.0
            if duration is not None:
                delay = min(delay, started + duration - now)
            await asyncio.sleep(max(0.0, delay))
    except asyncio.CancelledError:
        cancelled = True
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        log.info("producer cancelled after %d events", sent)
    finally:
        await sink.close()
    return report()


async def _write_whole(sink: Sink, batch: list[Event]) -> bool:
    """Write a chunk; if cancelled meanwhile, finish the chunk and return True."""
    write = asyncio.ensure_future(sink.write_many(batch))
    try:
        await asyncio.shield(write)
    except asyncio.CancelledError:
        await write
        return True
    return False
