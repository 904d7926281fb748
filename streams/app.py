"""The worker: the ingest stage and the Faust aggregate agent in one process.

- ingest (plain aiokafka, batch-at-a-time; see :mod:`streams.ingest.stage`) runs as a Faust
  task beside the agent, or in child processes of its own with ``INGEST_PROCESSES``
  (see :mod:`streams.ingest.processes`);
- the ``aggregate`` agent reads ``messaging.partials`` (partials and watermark marks,
  low volume) and keeps one :class:`OwnerState` per partition, saved to a compacted
  topic of its own (``messaging.aggregate.state``, not a Faust table: see ``Worker``)
  that restores it on restart or rebalance; closed windows go to ``messaging.metrics``
  and to the gauges on ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import faust
import orjson
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from streams.aggregate.closed import ClosedWindow, progress_record
from streams.aggregate.exposition import WindowCollector, WindowOwner
from streams.aggregate.owner import OwnerState
from streams.aggregate.state_records import NewestStates, position_headers
from streams.catalogue import PERIODS
from streams.history.stage import HistoryStage
from streams.ingest.processes import IngestProcesses
from streams.ingest.stage import IngestStage
from streams.kafka import access, faust_transport
from streams.kafka.io import STATE_RECORD_MAX_BYTES, being_cancelled
from streams.kafka.outage import is_fatal
from streams.kafka.stage import read_partitions
from streams.pipeline_metrics import PipelineMetrics
from streams.risk.stage import RiskStage
from streams.settings import Settings
from streams.store.partition_store import USAGE_PARTS, total_usage

log = logging.getLogger(__name__)


def _state_key(partition: int, part: str = "") -> bytes:
    """``p3`` for an owner's state, ``p3:days`` for its closed days' sender sketches."""
    return f"p{partition}:{part}".encode() if part else f"p{partition}".encode()



# One ordered log: an owner's windows are read before its progress record that covers
# them (streams.history.assembly). The topic is made with one partition; one made with
# more still gets everything on the first.
METRICS_PARTITION = 0
RESTORE_RETRY_SECONDS = 2.0  # an aggregate restore that failed (Kafka away) tries again

_CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"


def _credentials(settings: Settings) -> Any:
    options = settings.kafka_client_options()
    if settings.kafka_sasl_mechanism:
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=options.get("sasl_plain_password"),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=options.get("ssl_context"),
        )
    if "ssl_context" in options:
        return faust.SSLCredentials(options["ssl_context"])
    return None


class Stage(Protocol):
    """A batch stage beside the Faust agent: in this process or in child processes."""

    name: str

    async def start(self) -> None: ...
    async def run(self) -> None: ...
    async def stop(self) -> None: ...


class Worker:
    """Builds the Faust app with its agent, table, ingest service and web page."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = PipelineMetrics(self.registry)
        (settings.cache_dir / "faust").mkdir(parents=True, exist_ok=True)
        brokers = [f"{faust_transport.SCHEME}://{h}" for h in settings.bootstrap.split(",")]
        self.app = faust.App(
            settings.app_id,
            broker=brokers,
            broker_credentials=_credentials(settings),
            store="memory://",
            # Faust wants a data directory even for in-memory tables; not the cwd
            datadir=str(settings.cache_dir / "faust" / "{conf.name}-data"),
            topic_partitions=settings.partials_partitions,
            topic_replication_factor=settings.topic_replication_factor,
            # every topic, Faust's assignor topic included, is made by ensure_topics (or
            # an admin): Faust would ask for CREATE on a topic that exists already
            topic_allow_declare=False,
            consumer_auto_offset_reset="earliest",
            web_enabled=True,
            web_bind=settings.metrics_host,
            web_port=settings.metrics_port,
            web_host=settings.metrics_host,
            broker_commit_interval=1.0,
            # no static membership here: Faust's assignor checks each member's web URL
            # in the stored assignment, which a restart on another port would trip
            broker_session_timeout=settings.session_timeout_ms / 1000,
            broker_heartbeat_interval=max(1.0, settings.session_timeout_ms / 4000),
            producer_acks=-1,
            # an owner's state record grows with its open windows (a backlog: over 1 MB,
            # Faust's default, with 10-s windows): as large as its topic takes
            producer_max_request_size=STATE_RECORD_MAX_BYTES,
        )
        self.partials = self.app.topic(
            settings.partials_topic, key_serializer="raw", value_serializer="raw",
            partitions=settings.partials_partitions,
        )
        self.metrics_out = self.app.topic(
            settings.metrics_topic, key_serializer="raw", value_serializer="raw"
        )
        # One OwnerState per partials partition, in a compacted topic of its own that the
        # agent writes and reads back itself, not a Faust table: Faust's table recovery
        # hung after rebalances in two different ways (a standby fetch racing the
        # recovery seek; with standbys off, a newly assigned changelog partition that
        # never delivered a record), each time stopping every window for good.
        self.state_out = self.app.topic(
            settings.aggregate_state_topic, key_serializer="raw", value_serializer="raw"
        )
        self._states: dict[int, OwnerState] = {}  # owned partials partition -> live state
        # restores under way, started on assignment (or by a record, if that came first)
        self._loading: dict[int, asyncio.Task[OwnerState]] = {}
        self._aggregate_assigned = False  # Faust has assigned partials partitions (or none)
        self._progress: dict[int, int] = {}  # partition -> last window published through
        # State records sent and not yet known to be in Kafka, oldest first: every offset
        # commit waits for them (see _states_written).
        self._state_writes: deque[asyncio.Future[Any]] = deque()
        # A stage that cannot go on sets the worker's exit code and calls on_failure (the
        # process's bounded shutdown); Faust's own crash path is the fallback, but it
        # sometimes stopped nothing at all (seen once: a minute without exiting).
        self.failed: int | None = None
        self.on_failure: Callable[[], object] | None = None
        self.app.on_partitions_revoked.connect(self._forget_revoked)
        self.app.on_partitions_assigned.connect(self._restore_assigned)
        self.ingest: Stage = (
            IngestProcesses(settings, self.metrics.record) if settings.ingest_processes
            else IngestStage(settings, self.metrics.record)
        )
        self.risk = RiskStage(settings, self.metrics.record)
        self.registry.register(
            WindowCollector(self._window_owners, settings.window_seconds, self.settled))
        owned = self.metrics.owned_partitions  # ingest: from its reports
        owned.labels("risk").set_function(lambda: len(self.risk.partitions))
        owned.labels("aggregate").set_function(lambda: len(self._assigned_partials()))
        for part in USAGE_PARTS:
            self.metrics.state_store_bytes.labels("risk", part).set_function(
                lambda part=part: total_usage(p.store for p in self.risk.partitions.values())[part]
            )
        self.app.agent(self.partials, name="aggregate")(self._aggregate)
        # Started by the process's worker as soon as it runs (GracefulWorker), not as
        # Faust app tasks: those start only after the Faust consumer's first rebalance,
        # which after a crash waits out the dead member's session (SESSION_TIMEOUT_MS).
        # The batch stages need none of it: their own groups use static membership.
        self.history = (
            HistoryStage(settings, self.registry) if settings.history_remote_write_url else None
        )
        self.stages = [self._run_stage(self.ingest), self._run_stage(self.risk)]
        if self.history is not None:
            self.stages.append(self._run_stage(self.history))
        self.app.page("/metrics")(self._metrics_view())
        self.app.page("/healthz")(self._health_view())

    # --- aggregate agent ---------------------------------------------------------------
    async def _aggregate(self, stream: faust.StreamT) -> None:
        barriers = self.app.consumer.commit_barriers
        if self._states_written not in barriers:
            barriers.append(self._states_written)
        async for event in stream.events():
            partition = event.message.partition
            try:
                await self._apply(partition, event.message.offset, event.value)
            except BaseException as exc:
                # The state in memory may have moved past windows it did not publish,
                # and Faust restarts a failed agent in this process: forget it, and
                # reload the last saved state, which publishes them again at the next
                # mark (else the history would take the next progress record for
                # "published" and write those windows without this owner's share).
                self._states.pop(partition, None)
                self._progress.pop(partition, None)
                if isinstance(exc, Exception):
                    self._restore_if_owned(partition)  # not at a next record: none may come
                raise

    async def _apply(self, partition: int, offset: int, value: bytes) -> None:
        """One record of a partials partition: apply it, publish what it closed, then
        this owner's progress, then save its state."""
        state = await self._owner_state(partition)
        closed = state.apply(orjson.loads(value))
        state.position = max(state.position, offset)
        if closed:
            # Published, and acknowledged by the broker, before the state that says
            # "closed" can reach its topic: a crash in between then publishes the
            # same windows again (identical records), instead of losing them.
            sent = [
                await self.metrics_out.send(key=item.key, value=orjson.dumps(item.record()),
                                            partition=METRICS_PARTITION)
                for item in closed
            ]
            for item, delivery in zip(closed, sent, strict=True):
                await delivery
                if isinstance(item, ClosedWindow):
                    log.info("closed %s %d (owner %d)", PERIODS[item.resolution],
                             item.start, partition)
            closed_a_day = any(
                isinstance(w, ClosedWindow) and w.resolution == "day" for w in closed
            )
            if closed_a_day and state.rollups.days:
                # the trailing days' sketches change once a day: a record of their own
                await (await self.state_out.send(
                    key=_state_key(partition, "days"),
                    value=orjson.dumps(state.rollups.history_json()), partition=partition,
                    headers=position_headers(state.position),
                ))
        await self._publish_progress(partition, state)
        # In Kafka before Faust commits past this record (_states_written holds the
        # commit back): a restarted owner resumes from a state at or ahead of the
        # committed offset, and the applied-offset marks skip what it has seen. Not
        # awaited here: a broker round trip per record kept the agent to 5 records/s
        # on a busy machine, and one owner's windows stood still for a minute.
        # (aiokafka sends one request per partition at a time, retries included, so
        # an owner's state records land in the order they were sent.)
        self._state_writes.append(await self.state_out.send(
            key=_state_key(partition), value=state.dumps(), partition=partition,
            headers=position_headers(state.position),
        ))
        self._forget_written_states()

    async def _states_written(self) -> None:
        """Before Faust commits offsets of the partials: every state record sent for the
        records below them is in Kafka. One that failed stops the worker, and this and
        every later commit, so that no offset past a state that was lost is committed
        (the restart reads the records again from the last commit)."""
        for delivery in list(self._state_writes):  # those sent before this commit
            failure: Exception
            try:
                await asyncio.shield(delivery)
                continue
            except asyncio.CancelledError:
                if not delivery.cancelled():
                    raise  # the commit itself is cancelled (stopping)
                failure = RuntimeError("an aggregate state record's send was cancelled")
            except Exception as exc:  # noqa: BLE001 - re-raised below, whatever it is
                failure = exc
            if self.failed is None:  # once, not at every commit it stops
                await self._stage_failed("aggregate", failure)
            raise failure
        self._forget_written_states()

    def _forget_written_states(self) -> None:
        """Drop the oldest writes while they are in Kafka; one that failed (or was
        cancelled) stays, and fails every commit from then on."""
        writes = self._state_writes
        while writes and writes[0].done() and not writes[0].cancelled() and (
            writes[0].exception() is None
        ):
            writes.popleft()

    async def _publish_progress(self, partition: int, state: OwnerState) -> None:
        """Once per window boundary the watermark passes, after the windows it closed
        (a crash in between publishes them again, then this). Also when nothing closed:
        a window this owner had no data for is done, and the history must know."""
        value = state.watermark.value
        if value == -math.inf:
            return
        boundary = math.floor(value / state.window_size)
        if boundary <= self._progress.get(partition, -1):
            return
        await (await self.metrics_out.send(
            key=f"progress:{partition}".encode(),
            value=orjson.dumps(progress_record(partition, value)),
            partition=METRICS_PARTITION,
        ))
        self._progress[partition] = boundary

    async def _owner_state(self, partition: int) -> OwnerState:
        """The agent's live state of an owned partition: from memory, else (restored on
        assignment, or now if a record came first) the newest records of its state topic."""
        state = self._states.get(partition)
        if state is None:
            # shielded: the agent cancelled (stopping) must not cancel a shared restore
            state = await asyncio.shield(self._restoring(partition))
        return state

    def _restoring(self, partition: int) -> asyncio.Task[OwnerState]:
        """The restore of a partition's state, started once however many ask for it."""
        task = self._loading.get(partition)
        if task is None:
            task = self._loading[partition] = asyncio.ensure_future(self._restore(partition))
            task.add_done_callback(self._restore_ended)
        return task

    async def _restore(self, partition: int) -> OwnerState:
        newest = NewestStates()  # the most advanced record of each key (see its module)
        records = await read_partitions(
            self.settings.kafka_client_options(), self.settings.aggregate_state_topic,
            [partition], lambda _, message: newest.offer(message.key, message.value,
                                                         message.headers),
        )
        key = _state_key(partition)
        raw = newest.get(key)
        state = (
            OwnerState.loads(raw) if raw
            else OwnerState(partition, self.settings.window_seconds,
                             self.settings.inmail_response_horizon_seconds)
        )
        state.position = newest.position(key)
        history = newest.get(_state_key(partition, "days"))
        if history:
            state.rollups.restore_history(orjson.loads(history))
        if self._current(partition):
            await self._write_again(partition, newest)
        if self._current(partition):  # not revoked meanwhile, the write included
            self._states[partition] = state
        log.info("aggregate restored partition %d (%d state records read)", partition,
                 records)
        return state

    async def _write_again(self, partition: int, newest: NewestStates) -> None:
        """A record that lost to an earlier, more advanced one was the last of its key:
        write the winner again, or compaction would keep the loser."""
        for key in sorted(k for k in newest.superseded if k is not None):
            log.warning("aggregate partition %d: the last %r state record is behind an "
                        "earlier one (a worker frozen or cut off from the group kept "
                        "writing after its partitions moved); restored the most advanced "
                        "(position %d) and wrote it again", partition, key,
                        newest.position(key))
            await (await self.state_out.send(
                key=key, value=newest.get(key), partition=partition,
                headers=position_headers(newest.position(key)),
            ))

    def _current(self, partition: int) -> bool:
        """Whether the running restore is still the partition's (no revoke since)."""
        return self._loading.get(partition) is asyncio.current_task()

    def _restore_ended(self, task: asyncio.Task[OwnerState]) -> None:
        mine = [p for p, loading in self._loading.items() if loading is task]
        for partition in mine:
            del self._loading[partition]
        if task.cancelled() or task.exception() is None or not mine:
            return  # done, or revoked meanwhile (nothing to retry)
        # Still ours: again in a while (an agent awaiting it raises meanwhile), not at
        # the partition's next record, which after the input ended never comes.
        log.warning("aggregate could not restore partitions %s (%s); it tries again in "
                    "%.0f s", mine, task.exception(), RESTORE_RETRY_SECONDS)
        for partition in mine:
            asyncio.get_running_loop().call_later(
                RESTORE_RETRY_SECONDS, self._restore_if_owned, partition)

    def _restore_if_owned(self, partition: int) -> None:
        """Restore a partition still assigned here whose state is not in memory."""
        if partition in self._assigned_partials() and partition not in self._states:
            self._restoring(partition)

    async def _restore_assigned(self, app: Any, assigned: set[Any], **kwargs: Any) -> None:
        """Restore newly assigned partitions now, not at their next record: after the
        input has ended (or while it pauses) none may come, and /metrics would never
        show them (see :meth:`settled`)."""
        self._aggregate_assigned = True
        for tp in assigned:
            if tp.topic == self.settings.partials_topic and tp.partition not in self._states:
                self._restoring(tp.partition)

    async def _forget_revoked(self, app: Any, revoked: set[Any], **kwargs: Any) -> None:
        self._aggregate_assigned = False
        for tp in revoked:
            if tp.topic == self.settings.partials_topic:
                self._states.pop(tp.partition, None)
                self._progress.pop(tp.partition, None)
                self._loading.pop(tp.partition, None)  # it finishes, but keeps nothing

    def settled(self) -> bool:
        """Whether every partition this worker owns has its state here (aggregate and
        risk): only then is the sum of its owners all that it owns."""
        restored = self._states.keys()
        return (self._aggregate_assigned and self.risk.settled
                and all(p in restored for p in self._assigned_partials()))

    def _window_owners(self) -> list[WindowOwner]:
        return [*self._owned_states(), *(p.state for p in self.risk.partitions.values())]

    def _assigned_partials(self) -> list[int]:
        assigned = self.app.consumer.assignment() if self.app.consumer else set()
        return [tp.partition for tp in assigned if tp.topic == self.settings.partials_topic]

    def _owned_states(self) -> list[OwnerState]:
        """What /metrics shows: the states the agent holds for its assigned partitions.
        A scrape never loads or creates one (a partition is shown once the agent has
        restored it)."""
        assigned = set(self._assigned_partials())
        return [state for partition, state in self._states.items() if partition in assigned]

    # --- the batch stages ------------------------------------------------------------
    def _run_stage(self, stage: Stage) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            try:
                await stage.start()
                await stage.run()
            except asyncio.CancelledError as cancelled:
                if being_cancelled():
                    raise  # the worker is stopping it
                # a library's own cancelled future let out (see close_client): a stage
                # ended that way would leave the worker up and serving, its input unread
                failure = RuntimeError(
                    f"{stage.name} stage ended by a cancellation that was not the worker's")
                failure.__cause__ = cancelled
                await self._stage_failed(stage.name, failure)
            except Exception as exc:  # noqa: BLE001 - a dead stage takes the worker down, loudly
                await self._stage_failed(stage.name, exc)

        run.__name__ = f"run_{stage.name}"
        return run

    async def _stage_failed(self, stage: str, exc: Exception) -> None:
        refusal = await self._refusal(exc)
        if refusal is not None:  # nothing uncommitted survives: it was one transaction
            log.error("%s stage stops: %s", stage, refusal)
        else:
            log.error("%s stage crashed", stage, exc_info=exc)
        if self.failed is None:  # the first failure says why the worker ends
            self.failed = access.EXIT_CODE if refusal is not None else 1
        if self.on_failure is not None:
            self.on_failure()
        else:
            await self.app.crash(exc)

    async def _refusal(self, exc: Exception) -> str | None:
        if not is_fatal(exc):
            return None
        return await access.explain_refusal(
            self.settings, exc, access.worker_grants(self.settings),
            access.transactional_ids(self.settings),
        )

    async def stop_stages(self) -> None:
        """Let each stage commit its batch in flight, then close its clients."""
        for restore in list(self._loading.values()):  # no client outlives the worker
            restore.cancel()
        await self.ingest.stop()
        await self.risk.stop()
        if self.history is not None:
            await self.history.stop()

    # --- web ----------------------------------------------------------------------------
    def _metrics_view(self) -> type[View]:
        registry = self.registry

        class MetricsView(View):
            async def get(self, request: Request) -> Response:
                # ?name[]=...: only those families, as prometheus_client's own server
                # does; a poll for one counter need not render the whole catalogue
                names = request.query.getall("name[]", [])
                source = registry.restricted_registry(names) if names else registry
                # aiohttp wants the charset apart from the content type
                return self.bytes(generate_latest(source), content_type=_CONTENT_TYPE)

        return MetricsView

    def _health_view(self) -> type[View]:
        class HealthView(View):
            async def get(self, request: Request) -> Response:
                return self.json({"status": "ok"})

        return HealthView
