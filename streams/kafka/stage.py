"""A consume-transform-produce stage on plain aiokafka, exactly once by transactions.

Subclasses own per-partition state and say how to restore it and how to turn a batch
into output records; this class does the rest: a read-committed consumer group, one
transactional producer per worker (its id fences the previous incarnation of the same
worker), a lock so that a rebalance waits for the batch in flight to commit, restoring
state from a compacted changelog on assignment, and one transaction per batch holding
all outputs, the state changelog records and the input offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import ProducerFenced
from aiokafka.structs import TopicPartition

from streams.kafka.fenced_offsets import fence_offset_commits
from streams.kafka.io import CLOSE_TIMEOUT_SECONDS, BatchWriter, close_client
from streams.kafka.outage import (
    RETRIABLE_ERRORS,
    RETRY_FIRST_SECONDS,
    RETRY_MAX_SECONDS,
    Outage,
    OutageReport,
    is_fatal,
    keep_trying,
    pause,
)
from streams.kafka.raw_records import raw_records
from streams.process_memory import release_free_memory
from streams.settings import Settings

log = logging.getLogger(__name__)

STALLED_AFTER_SECONDS = 5.0  # a batch in flight this long: the broker is not answering
MAX_UNEXPECTED_IN_A_ROW = 5  # failures not Kafka's (bugs) before the stage gives up
MAX_YOUNG_FENCINGS, FENCING_WINDOW_SECONDS = 3, 300.0  # a twin with our transactional id

UNDECIDED_POLL_SECONDS = 0.1  # how often a restore asks whether a transaction is decided
UNDECIDED_REPORTED_AFTER_SECONDS = 1.0
# A transaction still pending long after the usual timeouts may be a hanging one (the
# broker lost track of it), which holds the partition for good: a warning now and then
UNDECIDED_WARNED_EVERY_SECONDS = 60.0

State = TypeVar("State")


async def read_partitions(
    options: dict[str, Any], topic: str, partitions: list[int],
    on_record: Callable[[int, Any], None],
    start_at: Callable[[int, int, int], int] | None = None,
) -> int:
    """Read committed records of some partitions up to their end, once every transaction
    written to them before is decided (see :func:`_decided_ends`): from their start, or
    from where ``start_at(partition, beginning, end)`` says."""
    reader = AIOKafkaConsumer(
        isolation_level="read_committed", enable_auto_commit=False,
        value_deserializer=raw_records, **options,
    )
    await reader.start()
    records = 0
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        reader.assign(tps)
        beginnings = await reader.beginning_offsets(tps)
        ends = await _decided_ends(reader, options, tps)
        remaining = set()
        for tp in tps:
            start = beginnings[tp]
            if start_at is not None:
                start = start_at(tp.partition, beginnings[tp], ends[tp])
            reader.seek(tp, start)
            if ends[tp] > start:
                remaining.add(tp)
        while remaining:
            batch = await reader.getmany(*remaining, timeout_ms=1000)
            for tp, messages in batch.items():
                for message in messages:
                    records += 1
                    on_record(tp.partition, message)
            for tp in list(remaining):
                if await reader.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await close_client(reader, "a restore")
    return records


async def _decided_ends(
    reader: AIOKafkaConsumer, options: dict[str, Any], tps: list[TopicPartition]
) -> dict[TopicPartition, int]:
    """Where a restore of ``tps`` ends: each partition's last stable offset, once it has
    reached the partition's high watermark as this restore began, so that every
    transaction written before then is decided. A previous owner that was stalled or
    cut off mid-commit may still commit its batch after the group gave the partition to
    us: read only up to the stable offset before that, the state would lack the batch
    and the stage would apply its input again, counting it twice. This is the restore's
    ``require_stable`` (KIP-447): the wait ends when that owner commits or is fenced,
    or when the broker aborts its transaction (``TRANSACTION_TIMEOUT_MS``)."""
    # a consumer of the default isolation level lists the high watermarks
    probe = AIOKafkaConsumer(enable_auto_commit=False, **options)
    await probe.start()
    try:
        written = await probe.end_offsets(tps)
    finally:
        await close_client(probe, "a restore")
    began = time.monotonic()
    reported, warned = False, began
    while True:
        stable = await reader.end_offsets(tps)
        held = sorted((tp for tp in tps if stable[tp] < written[tp]),
                      key=lambda tp: tp.partition)
        undecided = [tp.partition for tp in held]
        waited = time.monotonic() - began
        if not held:
            if reported:
                log.info("%s: the pending transaction is decided after %.1f s; restoring",
                         tps[0].topic, waited)
            return stable
        if not reported and waited >= UNDECIDED_REPORTED_AFTER_SECONDS:
            reported = True
            log.info("%s partitions %s hold a transaction still pending (a previous "
                     "owner's batch): the restore waits until it is committed or aborted",
                     tps[0].topic, undecided)
        if time.monotonic() - warned >= UNDECIDED_WARNED_EVERY_SECONDS:
            warned = time.monotonic()
            log.warning(
                "%s partitions %s: a transaction has been pending for %.0f s and the restore "
                "still waits for it. Longer than its producer's transaction timeout and the "
                "broker's abort check (transaction.abort.timed.out.transaction.cleanup."
                "interval.ms) means a hanging one, which no timeout ends (Kafka 4.1 to 4.4 "
                "leave one when a partition has no leader as they decide it: KAFKA-20734). "
                "Check it with kafka-transactions.sh describe-producers, then end it: %s",
                tps[0].topic, undecided, waited, "; ".join(
                    hanging_abort_command(options["bootstrap_servers"], tp, stable[tp])
                    for tp in held
                ),
            )
        await asyncio.sleep(UNDECIDED_POLL_SECONDS)


def hanging_abort_command(bootstrap_servers: str, tp: TopicPartition, stable: int) -> str:
    """How an operator ends the transaction that holds ``tp`` at its last stable offset
    (the offset where the oldest open transaction begins)."""
    return (f"kafka-transactions.sh --bootstrap-server {bootstrap_servers} abort "
            f"--topic {tp.topic} --partition {tp.partition} --start-offset {stable}")


async def _close(stage: str, clients: list[AIOKafkaConsumer | AIOKafkaProducer]) -> None:
    for client in clients:
        await close_client(client, stage)


class _Rebalance(ConsumerRebalanceListener):
    """The rebalance callbacks of one consumer incarnation. After a restart, a callback
    of the closed consumer (it may have waited for the stage's lock meanwhile) must
    neither restore nor release anything: it is told apart by its incarnation."""

    def __init__(self, stage: TransactionalStage[Any], incarnation: int) -> None:
        self.stage, self.incarnation = stage, incarnation

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.stage.on_partitions_revoked(revoked, self.incarnation)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.stage.on_partitions_assigned(assigned, self.incarnation)


class TransactionalStage(ABC, Generic[State]):
    name: str = "stage"

    def __init__(
        self, settings: Settings, input_topic: str, state_topic: str, max_batch: int,
        source: str = "", on_outage: Callable[[OutageReport], object] | None = None,
    ) -> None:
        self.settings = settings
        self.input_topic = input_topic
        self.state_topic = state_topic
        self.max_batch = max_batch
        self.group_id = f"{settings.app_id}-{self.name}"
        self.partitions: dict[int, State] = {}
        self.input_partition_count = 0
        self._options = settings.kafka_client_options()
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._started = False
        self._incarnation = 0  # of the consumer: see _Rebalance
        self._in_flight: asyncio.Future[None] | None = None
        # assigned, paused, state not restored yet: partition -> the assignment's token
        self._to_restore: dict[int, int] = {}
        # the input partitions of the consumer's current assignment (None: between a
        # revoke and the next assignment, or before the first)
        self._assignment: set[int] | None = None
        self._assignments = 0
        # raised by the next batch: a rebalance callback failed (aiokafka only logs it)
        self._failure: BaseException | None = None
        self._failures_in_a_row = 0  # restarts since the last commit: the backoff
        self._unexpected_in_a_row = 0  # of them, failures that are not Kafka's
        self._fencings: list[float] = []  # when a young transaction was fenced
        self._transaction_began = 0.0
        self.restarts = 0
        self.health = Outage(self.name, source, on_outage or (lambda report: None))
        self.consumer: AIOKafkaConsumer
        self.producer: AIOKafkaProducer

    # --- what a stage says ------------------------------------------------------------
    @abstractmethod
    def new_state(self, partition: int) -> State: ...

    async def open_state(self, partition: int) -> State:
        """A fresh state for an assigned partition, before its restore."""
        return self.new_state(partition)

    @abstractmethod
    def restore_record(self, state: State, key: bytes | None, value: bytes | None) -> None: ...

    def restore_from(self, state: State, beginning: int, end: int) -> int:
        """Where a fresh state's changelog partition is read from (a local copy may hold
        a prefix of it already): by default its start."""
        return beginning

    def restore_message(self, state: State, message: Any) -> None:
        """One changelog record read back (``message.offset`` says where)."""
        self.restore_record(state, message.key, message.value)

    def restored(self, state: State) -> None:
        """The state's changelog partition is read up to its end."""

    def resume_at(self, state: State) -> int | None:
        """The input offset a restored state has applied everything before, as its
        changelog says (written in the same transaction as the group's offsets, so the
        two agree); None: it does not say (a fresh state, an earlier version's)."""
        return None

    def checkpoint(self, writer: BatchWriter) -> None:
        """After each committed transaction (``writer.last_offset`` says where its
        changelog records are): e.g. write a local copy of the state."""

    def close_state(self, state: State) -> None:
        """A state is dropped (revoked, restarted, stopped): release what it holds."""

    @abstractmethod
    async def process(
        self, tp: TopicPartition, state: State, messages: list[Any], writer: BatchWriter
    ) -> None:
        """Turn one partition's messages into records (outputs and state changelog)."""

    async def after_batch(self, writer: BatchWriter) -> None:
        """Records to add to every transaction, with or without input (e.g. watermarks)."""

    def committed(self, events: int, seconds: float) -> None:
        """Called after each committed transaction: count what it did."""

    def aborted(self) -> None:
        """Called when a batch failed: forget what it counted (it is done again)."""

    async def on_release(self, writer: BatchWriter, partitions: list[int]) -> None:
        """Records to publish as this worker gives partitions up (revoke or stop)."""

    async def on_assign(self, writer: BatchWriter, partitions: list[int]) -> None:
        """Records to publish as partitions become this worker's, before their state is
        restored (e.g. holding their watermark until they report again)."""

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect; while Kafka cannot be reached, keep trying (one log line, see
        :class:`~streams.kafka.outage.Outage`) until it answers or the stage is stopped. Only
        an error retrying cannot mend (bad credentials, a missing permission) is raised."""
        await keep_trying(
            self.health, "connecting", self._connect, self._drop_clients, self._stopping
        )

    async def _connect(self) -> None:
        # aiokafka clients bind to the running loop, so they are made here, not in __init__
        options = self._options
        self.consumer = AIOKafkaConsumer(
            group_id=self.group_id,
            # static membership: a restarted worker takes its partitions straight back
            # instead of waiting out the dead incarnation's session
            group_instance_id=f"{self.group_id}-{self.settings.worker_id}",
            session_timeout_ms=self.settings.session_timeout_ms,
            heartbeat_interval_ms=max(1000, self.settings.session_timeout_ms // 4),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            value_deserializer=raw_records,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=32 * 1024 * 1024,
            **options,
        )
        self.producer = AIOKafkaProducer(
            transactional_id=f"{self.group_id}-{self.settings.worker_id}",
            transaction_timeout_ms=self.settings.transaction_timeout_ms,
            linger_ms=5,
            max_batch_size=1024 * 1024,
            max_request_size=16 * 1024 * 1024,
            **options,
        )
        # The producer first: its InitProducerId fences a previous incarnation of this
        # worker and aborts that one's open transaction before we restore any state.
        await self.producer.start()
        fence_offset_commits(self.producer, self.consumer)
        await self.consumer.start()
        partitions = self.consumer.partitions_for_topic(self.input_topic)
        if not partitions:
            await self.consumer._client.force_metadata_update()
            partitions = self.consumer.partitions_for_topic(self.input_topic)
        self.input_partition_count = len(partitions or ())
        self.consumer.subscribe(
            [self.input_topic], listener=_Rebalance(self, self._incarnation)
        )
        self._started = True
        log.info("%s started: %d input partitions, group %s", self.name,
                 self.input_partition_count, self.group_id)

    @property
    def settled(self) -> bool:
        """Whether the state of every input partition assigned to this stage is here."""
        assigned = self._assignment
        return self._started and assigned is not None and assigned <= self.partitions.keys()

    def _retire(self) -> list[AIOKafkaConsumer | AIOKafkaProducer]:
        """Under the lock: this incarnation is over. Its state goes (it may be ahead of
        Kafka), its rebalance callbacks no longer act, and its clients are handed back
        to be closed outside the lock (closing a consumer waits for its coordinator,
        whose callback may be waiting for the lock)."""
        self._retire_state()
        self._started = False
        self._assignment = None
        self._failure = None
        clients = [getattr(self, "consumer", None), getattr(self, "producer", None)]
        return [client for client in clients if client is not None]

    async def _drop_clients(self) -> None:
        """After a failed connect: close what the attempt made."""
        async with self._lock:
            clients = self._retire()
        await _close(self.name, clients)

    async def stop(self) -> None:
        self._stopping.set()
        async with self._lock:  # the batch in flight commits first
            if self._in_flight is not None and self._in_flight.done():
                with contextlib.suppress(BaseException):  # its end is run()'s to report
                    self._in_flight.result()
            if self._started:
                await self._release(sorted(self.partitions))
            clients = self._retire()
        await _close(self.name, clients)

    async def run(self) -> None:
        """Batches until stopped. A failed batch (the broker down, stalled, fenced after
        its transaction timed out) is not the worker's end: the stage starts over from
        its last commit, in this process, as a restarted worker would."""
        while not self._stopping.is_set():
            try:
                await self._run_batches()
            except Exception as exc:  # noqa: BLE001 - judged: a restart, or raised
                if self._stopping.is_set():
                    return  # stopping: the batch is done again by whoever comes next
                self._judge(exc)
                await self._restart()

    def _judge(self, exc: Exception) -> None:
        """Whether a failure is worth a restart; raises when it is not."""
        if is_fatal(exc):
            raise exc
        now = time.monotonic()
        self._failures_in_a_row += 1
        if not isinstance(exc, RETRIABLE_ERRORS):  # not the broker: loud
            self._unexpected_in_a_row += 1
            log.exception("%s failed unexpectedly; it restarts from its last commit",
                          self.name)
            if self._unexpected_in_a_row >= MAX_UNEXPECTED_IN_A_ROW:
                raise RuntimeError(
                    f"{self.name} failed {self._unexpected_in_a_row} times in a row without "
                    "committing a batch; restarting does not mend it"
                ) from exc
        young = now - self._transaction_began < self.settings.transaction_timeout_ms / 1000
        if isinstance(exc, ProducerFenced) and young:
            # Fenced before the broker could have timed the transaction out: another
            # process holds this transactional id. Two of them would fence each other
            # forever, each restart undoing the other's.
            self._fencings = [t for t in self._fencings if now - t < FENCING_WINDOW_SECONDS]
            self._fencings.append(now)
            if len(self._fencings) >= MAX_YOUNG_FENCINGS:
                raise RuntimeError(
                    f"{self.name} was fenced {len(self._fencings)} times in "
                    f"{FENCING_WINDOW_SECONDS:.0f} s: another process runs with WORKER_ID "
                    f"{self.settings.worker_id!r} (it must be unique per running worker)"
                ) from exc
        self.health.failed("committing a batch", exc)

    async def _run_batches(self) -> None:
        while not self._stopping.is_set():
            if self._to_restore:
                await self._restore_assigned()
                continue
            batch = await self.consumer.getmany(
                timeout_ms=self.settings.ingest_poll_timeout_ms, max_records=self.max_batch
            )
            # A task of its own, shielded: when the worker stops, Faust cancels the task
            # running this loop, and a batch cut off mid-commit would leave the producer
            # committing while stop() opens the release transaction. stop() waits for
            # the lock, which the batch holds until it is committed.
            self._in_flight = asyncio.ensure_future(self._transact_locked(batch))
            await asyncio.shield(self._in_flight)

    async def _transact_locked(self, batch: dict[TopicPartition, list[Any]]) -> None:
        async with self._lock:
            if self._stopping.is_set():
                return
            if self._failure is not None:
                raise self._failure
            try:
                await self._transact(batch)
            except BaseException:
                # What the batch did to the state is not in Kafka: nothing may use it,
                # not even a rebalance callback queued for the lock. Start over.
                self.aborted()
                self._retire_state()
                raise

    def _retire_state(self) -> None:
        """The state and the rebalance callbacks of this incarnation are over."""
        self._incarnation += 1
        for state in self.partitions.values():
            self.close_state(state)
        self.partitions.clear()
        self._to_restore.clear()

    async def _restart(self) -> None:
        """Back to the last commit: in-memory state may be ahead of Kafka (the failed
        batch changed it), so it goes, and assignment restores it from the changelog;
        the input resumes from the committed offsets. No release: the partitions stay
        ours. A failure that repeats waits longer each time."""
        self.restarts += 1
        async with self._lock:
            clients = self._retire()
        await _close(self.name, clients)
        delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** (self._failures_in_a_row - 1))
        log.debug("%s restarts from its last commit in %.1f s (restart %d)", self.name,
                  delay, self.restarts)
        await pause(delay, self._stopping)
        if not self._stopping.is_set():
            await self.start()

    # --- rebalancing ----------------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: list[TopicPartition], incarnation: int) -> None:
        if incarnation == self._incarnation:
            self._assignment = None
        async with self._lock:  # waits for an in-flight batch to commit
            if incarnation != self._incarnation:
                return
            owned = sorted(tp.partition for tp in revoked if tp.partition in self.partitions)
            if owned and not self._stopping.is_set():
                await self._release(owned)
            for tp in revoked:
                state = self.partitions.pop(tp.partition, None)
                if state is not None:
                    self.close_state(state)
                self._to_restore.pop(tp.partition, None)

    async def _release(self, partitions: list[int]) -> None:
        """Publish what :meth:`on_release` says. Best effort: a worker that cannot reach
        the broker any more still stops (and one that dies cannot say anything at all),
        so nothing may depend on it for correctness. A failure short of stopping leaves
        the producer in doubt, so the next batch starts the stage over."""
        try:
            await self._publish(self.on_release, partitions)
            log.info("%s released partitions %s", self.name, partitions)
        except Exception as exc:  # noqa: BLE001 - kept for the next batch to raise
            log.warning("%s could not publish its release of partitions %s (%s)", self.name,
                        partitions, exc)
            if not self._stopping.is_set():
                self._failure = exc

    async def _publish(
        self, what: Callable[[BatchWriter, list[int]], Awaitable[None]], partitions: list[int]
    ) -> None:
        """What a rebalance says, in a transaction of its own, within a bound."""
        if not partitions:
            return
        writer = BatchWriter(self.producer)
        async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
            await self.producer.begin_transaction()
            await what(writer, partitions)
            await writer.flush()
            await self.producer.commit_transaction()

    async def on_partitions_assigned(
        self, assigned: list[TopicPartition], incarnation: int
    ) -> None:
        """Hold the fresh partitions' watermark and pause them; their state is restored
        by the batch loop (:meth:`_restore_assigned`), not here. aiokafka sends no
        heartbeats while this callback runs, so a restore in it that outlasted the
        session timeout (millions of conversations) got the member evicted, and its
        partitions went to another member that restored them in full, in turn, over and
        over. aiokafka only logs what a callback raises, so a failure is kept for the
        next batch to raise: a partition assigned without its state would otherwise be
        skipped until the next rebalance."""
        if incarnation == self._incarnation:
            self._assignment = {tp.partition for tp in assigned}
        async with self._lock:
            if incarnation != self._incarnation:
                return
            fresh = [tp.partition for tp in assigned
                     if tp.partition not in self.partitions and tp.partition not in self._to_restore]
            if not fresh:
                return
            # paused before anything awaits: a getmany running beside this callback must
            # not be handed their records before their state is here
            self.consumer.pause(*(TopicPartition(self.input_topic, p) for p in fresh))
            try:
                await self._publish(self.on_assign, sorted(fresh))
            except Exception as exc:  # noqa: BLE001 - kept for the next batch to raise
                log.warning("%s could not take partitions %s over (%s); it starts over",
                            self.name, sorted(fresh), exc)
                self._failure = exc
                return
            self._assignments += 1
            for partition in fresh:
                self._to_restore[partition] = self._assignments

    async def _restore_assigned(self) -> None:
        """Restore the state of the partitions assigned since the last batch, outside
        the lock (a rebalance may revoke them meanwhile: its callback must not wait for
        a restore), then take on those still assigned by the same assignment."""
        if self._failure is not None:
            raise self._failure
        incarnation, pending = self._incarnation, dict(self._to_restore)
        partitions = sorted(pending)
        states: dict[int, State] = {}
        taken: list[int] = []
        try:
            for partition in partitions:
                states[partition] = await self.open_state(partition)
            records = await read_partitions(
                self._options, self.state_topic, partitions,
                lambda p, m: self.restore_message(states[p], m),
                lambda p, beginning, end: self.restore_from(states[p], beginning, end),
            )
            for state in states.values():
                self.restored(state)
            async with self._lock:
                if incarnation != self._incarnation:
                    return
                taken = [p for p in partitions if self._to_restore.get(p) == pending[p]]
                for partition in taken:
                    del self._to_restore[partition]
                    self.partitions[partition] = states[partition]
                    # The input resumes where the state says, not where the group's
                    # committed offsets do: aiokafka's OffsetFetch (v3) cannot ask for
                    # stable offsets, and just after a broker restart it may be answered
                    # with those before the last committed transaction. Resumed from
                    # there, a stage would apply input its state already holds again.
                    resume_at = self.resume_at(states[partition])
                    if resume_at is not None:
                        self.consumer.seek(TopicPartition(self.input_topic, partition), resume_at)
                self.consumer.resume(*(TopicPartition(self.input_topic, p) for p in taken))
        finally:
            for partition, state in states.items():
                if partition not in taken:
                    self.close_state(state)
        log.info("%s restored partitions %s from %d changelog records", self.name, taken,
                 records)

    # --- one transaction per batch ------------------------------------------------------
    async def _transact(self, batch: dict[TopicPartition, list[Any]]) -> None:
        """One transaction: outputs, state changelog and input offsets, or nothing. A
        failure is raised (see :meth:`run`); a batch that the broker leaves unanswered
        for ``STALLED_AFTER_SECONDS`` is reported as an outage while it waits."""
        started = time.perf_counter()
        writer = BatchWriter(self.producer)
        offsets: dict[TopicPartition, int] = {}
        events = 0
        self._transaction_began = began = time.monotonic()
        stalled = asyncio.get_running_loop().call_later(
            STALLED_AFTER_SECONDS, lambda: self.health.failed(
                "committing a batch",
                TimeoutError(f"no answer for {STALLED_AFTER_SECONDS:.0f} s"), began=began,
            ),
        )
        try:
            await self.producer.begin_transaction()
            for tp, messages in batch.items():
                state = self.partitions.get(tp.partition)
                if state is None or not messages:
                    if messages and tp.partition in self._to_restore:
                        # ours, its state not restored yet: read them again after it is
                        self.consumer.seek(tp, messages[0].offset)
                    continue  # revoked between fetch and now: the new owner redoes it
                events += len(messages)
                await self.process(tp, state, messages, writer)
                offsets[tp] = messages[-1].offset + 1
            await self.after_batch(writer)
            # Every record in the partitions' logs before the offsets are committed: once
            # the group has taken the offsets, a new owner's restore must see this
            # transaction as pending (see _decided_ends), which it cannot while the
            # records are still in our buffers. A worker frozen in between (a stalled
            # VM) would otherwise wake up, write them and commit after the new owner
            # restored without them and applied the batch again.
            await writer.flush()
            if offsets:
                await self.producer.send_offsets_to_transaction(offsets, self.group_id)
            await self.producer.commit_transaction()
        finally:
            stalled.cancel()
        self.checkpoint(writer)
        if offsets or writer.records:  # an empty transaction never reaches the broker
            self._failures_in_a_row = self._unexpected_in_a_row = 0
            self.health.succeeded("committing a batch")
        self.committed(events, time.perf_counter() - started)
        release_free_memory()
