"""The history stage: every closed window, whole, into Prometheus at its event time.

It reads ``messaging.metrics`` in a consumer group of its own (one worker holds its one
partition at a time), assembles each window from all its owners
(:mod:`streams.history.assembly`) and writes it with Prometheus' remote-write protocol,
one sample per series stamped with the window's end. A window is written before the
offset past its records is committed, with the event time up to which every window is
written beside the offset (the commit's metadata): a crash repeats a write, which
Prometheus takes as a no-op, and never skips one.

Prometheus down or slow: the windows wait (and keep coming) and the write is retried
with a growing pause; nothing is committed past them meanwhile. A window Prometheus
refuses for good (HTTP 400: older than its out-of-order window, say) is logged and
counted, and the stage goes on; any other answer (404: no receiver at that URL, 401,
403, 5xx) is retried, so a misconfiguration stalls the history
(MessagingHistoryStalled) instead of skipping it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge

from streams.history.assembly import AssembledWindow, Assembly
from streams.history.remote_write import RemoteWriteFailed, RemoteWriter, RemoteWriteRejected
from streams.kafka.io import close_client
from streams.kafka.outage import RETRIABLE_ERRORS, RETRY_FIRST_SECONDS, is_fatal, pause
from streams.settings import Settings

log = logging.getLogger(__name__)

MAX_SERIES_PER_WRITE = 20_000  # about 70 minute windows: a catch-up in a few requests
# Prometheus' own remote-write client backs off up to 5 s (max_backoff): once its
# endpoint answers again, a write comes within that. At 30 s, a Prometheus that came
# back waited up to half a minute for the first write, and the e2e test's compressed
# MessagingHistoryStalled (for: 10 s) fired on a healthy stack
RETRY_CAP_SECONDS = 5.0
REFUSALS_TOLD_EVERY_SECONDS = 60.0


def group_id(settings: Settings) -> str:
    return f"{settings.app_id}-history"


class HistoryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.windows = Counter(
            "messaging_history_windows_written", "Windows written to Prometheus (at their "
            "event time), by resolution; a rewrite after a restart counts again.",
            ["resolution"], registry=registry,
        )
        self.rejected = Counter(
            "messaging_history_windows_rejected",
            "Windows Prometheus refused for good (HTTP 400: e.g. older than its "
            "out-of-order window).",
            registry=registry,
        )
        self.failures = Counter(
            "messaging_history_write_failures",
            "Writes that did not land and were retried (Prometheus down or slow, 5xx, "
            "404 without the receiver, 401/403).",
            registry=registry,
        )
        self.pending = Gauge(
            "messaging_history_pending_windows",
            "Windows read but not yet written: waiting for an owner, or for Prometheus.",
            registry=registry,
        )
        self.written_through = Gauge(
            "messaging_history_written_through_timestamp_seconds",
            "Event time up to which every closed window is in Prometheus' history.",
            registry=registry,
        )


class HistoryStage:
    name = "history"

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.writer = RemoteWriter(settings.history_remote_write_url)
        self.metrics = HistoryMetrics(registry)
        self.assemblies: dict[int, Assembly] = {}
        self._committed: dict[int, tuple[int, str]] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._retry_at = 0.0
        self._refused, self._refused_told_at = 0, -math.inf
        self._retry_delay = RETRY_FIRST_SECONDS
        self._failing_since: float | None = None
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()
        self.metrics.pending.set_function(
            lambda: sum(len(a.pending) for a in self.assemblies.values()))
        self.metrics.written_through.set_function(self._written_through)

    def _written_through(self) -> float:
        """0 until something is written (a partition of a topic made with more than one
        may never have anything: it does not hold the others back)."""
        finite = [a.written_through for a in self.assemblies.values()
                  if math.isfinite(a.written_through)]
        return min(finite) if finite else 0.0

    async def start(self) -> None:
        options = self.settings.kafka_client_options()
        self._admin = AIOKafkaAdminClient(**options)
        await self._admin.start()
        self._consumer = AIOKafkaConsumer(
            group_id=group_id(self.settings), enable_auto_commit=False,
            auto_offset_reset="earliest", isolation_level="read_committed",
            session_timeout_ms=self.settings.session_timeout_ms,
            heartbeat_interval_ms=max(1000, self.settings.session_timeout_ms // 4),
            **options,
        )
        self._consumer.subscribe([self.settings.metrics_topic], listener=_Listener(self))
        await self._consumer.start()
        log.info("history: writing every closed window to %s",
                 self.settings.history_remote_write_url)

    async def run(self) -> None:
        """Read, assemble, write, commit, until stopped. A Kafka fault is waited out (the
        consumer reconnects by itself; nothing is committed past what is written)."""
        assert self._consumer is not None
        while not self._stopping.is_set():
            try:
                # While Prometheus fails, read no further: what is read waits in memory,
                # and it is all read again after a restart anyway. (Polling goes on, so
                # the group keeps this member.)
                assigned = self._consumer.assignment()
                if self._waiting_to_retry():
                    self._consumer.pause(*assigned)
                else:
                    self._consumer.resume(*assigned)
                batch = await self._consumer.getmany(timeout_ms=500, max_records=5_000)
                async with self._lock:  # stop() waits for a step in flight
                    if self._stopping.is_set():
                        return  # not committed: whoever comes next reads it again
                    for tp, messages in batch.items():
                        await self._add(tp, messages)
                    await self._flush()
            except RETRIABLE_ERRORS as exc:
                if self._stopping.is_set():
                    return
                if is_fatal(exc):
                    raise
                log.info("history: Kafka fault (%s); going on from the last commit",
                         type(exc).__name__)
                await pause(RETRY_FIRST_SECONDS, self._stopping)

    async def _add(self, tp: TopicPartition, messages: list[Any]) -> None:
        assert self._consumer is not None
        assembly = self.assemblies.get(tp.partition)
        if assembly is None:
            if tp not in self._consumer.assignment():
                return  # revoked while the fetch was on its way
            # assigned, but the rebalance listener could not read the committed point:
            # read it now and start over from there
            restored = await self._restore(tp)
            if restored is None:
                self._consumer.seek(tp, messages[0].offset)  # these again, next time
                await pause(RETRY_FIRST_SECONDS, self._stopping)
            elif restored >= 0:
                self._consumer.seek(tp, restored)
            else:
                await self._consumer.seek_to_beginning(tp)
            return
        for message in messages:
            try:
                record = orjson.loads(message.value)
            except orjson.JSONDecodeError:
                record = None
            malformed = assembly.malformed
            assembly.add(record, message.offset)
            if assembly.malformed > malformed:
                log.warning("history: %s offset %d is not a window or progress record; "
                            "skipped", tp, message.offset)

    async def _flush(self) -> None:
        """Write what is complete (unless waiting to retry), then commit behind it."""
        if self._waiting_to_retry():
            return
        for partition, assembly in list(self.assemblies.items()):
            windows, through = assembly.complete()
            if through > assembly.written_through:
                if not await self._write(windows):
                    return
                assembly.written(windows, through)
            await self._commit(partition, assembly)

    def _waiting_to_retry(self) -> bool:
        return time.monotonic() < self._retry_at

    async def _write(self, windows: list[AssembledWindow]) -> bool:
        """True once Prometheus has them (or has refused them for good)."""
        chunk: list[AssembledWindow] = []
        size = 0
        for window in windows:
            if chunk and size + len(window.values) > MAX_SERIES_PER_WRITE:
                if not await self._write_chunk(chunk):
                    return False
                chunk, size = [], 0
            chunk.append(window)
            size += len(window.values)
        return not chunk or await self._write_chunk(chunk)

    async def _write_chunk(self, windows: list[AssembledWindow]) -> bool:
        try:
            await self.writer.write([s for w in windows for s in w.series()])
        except RemoteWriteRejected as exc:
            if len(windows) > 1:  # Prometheus refuses a whole request for one bad sample
                for window in windows:
                    if not await self._write_chunk([window]):
                        return False
                return True
            self.metrics.rejected.inc()
            self._refused += 1
            now = time.monotonic()
            if now - self._refused_told_at >= REFUSALS_TOLD_EVERY_SECONDS:
                # a first catch-up of a topic older than the out-of-order window is
                # refused window by window: one line a minute, with the count
                log.error("history: Prometheus refused %d window(s) for good, the latest "
                          "ending at %d (%s): %s", self._refused, windows[0].end,
                          windows[0].resolution, exc)
                self._refused, self._refused_told_at = 0, now
            return True
        except RemoteWriteFailed as exc:
            self.metrics.failures.inc()
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
                log.warning("history: cannot write to Prometheus (%s); windows wait, "
                            "retrying", exc)
            self._retry_at = now + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, RETRY_CAP_SECONDS)
            return False
        if self._failing_since is not None:
            log.info("history: writing to Prometheus again after %.0f s",
                     time.monotonic() - self._failing_since)
            self._failing_since = None
        self._retry_delay = RETRY_FIRST_SECONDS
        for window in windows:
            self.metrics.windows.labels(window.resolution).inc()
        return True

    async def _commit(self, partition: int, assembly: Assembly) -> None:
        assert self._consumer is not None
        tp = TopicPartition(self.settings.metrics_topic, partition)
        if tp not in self._consumer.assignment():
            return  # revoked meanwhile: not ours to commit
        point = assembly.commit_point(await self._consumer.position(tp))
        metadata = assembly.metadata()
        if self._committed.get(partition) == (point, metadata):
            return
        try:
            await self._consumer.commit({tp: (point, metadata)})
        except Exception as exc:  # noqa: BLE001 - a rebalance, a broker fault: next time
            log.info("history: commit of %s at %d deferred (%s)", tp, point,
                     type(exc).__name__)
            return
        self._committed[partition] = (point, metadata)

    async def _restore(self, tp: TopicPartition) -> int | None:
        """A new assembly for an assigned partition, knowing what is written already
        (the committed offset's metadata). Returns the committed offset (-1: none), or
        None if the broker could not say (no assembly then)."""
        assert self._admin is not None
        try:
            committed = await self._admin.list_consumer_group_offsets(
                group_id(self.settings), partitions=[tp])
        except RETRIABLE_ERRORS as exc:
            log.info("history: cannot read the committed point of %s (%s)", tp,
                     type(exc).__name__)
            return None
        found = committed.get(tp)
        if tp.partition not in self.assemblies:  # the listener and run() may both try
            assembly = Assembly.restored(self.settings.partials_partitions,
                                         found.metadata if found is not None else None)
            self.assemblies[tp.partition] = assembly
            written = assembly.written_through
            log.info("history: %s assigned, every window up to %s already written", tp,
                     "nothing" if written == -math.inf else f"{written:.0f}")
        return found.offset if found is not None else -1

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            await self._restore(tp)  # a failure is mended in run(), with the first records

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            assembly = self.assemblies.get(tp.partition)
            if assembly is not None:  # still assigned while the listener runs
                with contextlib.suppress(Exception):
                    await self._commit(tp.partition, assembly)
            self.assemblies.pop(tp.partition, None)
            self._committed.pop(tp.partition, None)

    async def stop(self) -> None:
        self._stopping.set()
        async with self._lock:  # the step in flight (a write, a commit) ends first
            if self._consumer is not None:
                # leaving the group does not call the rebalance listener: commit here
                for partition, assembly in list(self.assemblies.items()):
                    with contextlib.suppress(Exception):
                        await self._commit(partition, assembly)
                await close_client(self._consumer, "history")
            if self._admin is not None:
                with contextlib.suppress(Exception):
                    await self._admin.close()
            await self.writer.close()


class _Listener(ConsumerRebalanceListener):
    def __init__(self, stage: HistoryStage) -> None:
        self.stage = stage

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.stage.revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.stage.assigned(set(assigned))
