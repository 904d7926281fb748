"""Running the worker process: topics, the Faust worker, and a bounded, clean shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import faust

from streams import collector
from streams.app import Worker
from streams.kafka import access
from streams.kafka.io import ensure_topics
from streams.kafka.outage import Outage, keep_trying
from streams.settings import Settings

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> int:
    if settings.state_dir is not None:
        return _run_worker(settings)
    # no STATE_DIR: the stages' stores live as long as this process
    with tempfile.TemporaryDirectory(prefix="messaging-metrics-state-") as state_dir:
        return _run_worker(settings.model_copy(update={"state_dir": Path(state_dir)}),
                           temporary_state=Path(state_dir))


def _run_worker(settings: Settings, temporary_state: Path | None = None) -> int:
    collector.tune_for_large_state()
    try:
        # an orchestrator may start the worker before the broker: wait for it, saying so
        # once; what waiting cannot mend (credentials, certificates, ACLs) ends it here
        asyncio.run(keep_trying(
            Outage("worker", response="it starts once Kafka answers"),
            "checking its access and topics", lambda: prepare_kafka(settings),
        ))
    except access.KafkaAccessError as exc:
        log.error("the worker cannot start: %s", exc)
        return access.EXIT_CODE
    asyncio.set_event_loop(asyncio.new_event_loop())  # asyncio.run closed its loop
    worker = Worker(settings)
    try:
        GracefulWorker(
            worker, settings.shutdown_timeout_seconds, loglevel=settings.log_level.lower(),
            quiet=True, temporary_state=temporary_state,
        ).execute_from_commandline()
    except SystemExit:
        pass
    return worker.failed or 0  # 78: Kafka refused us (said in one line already)


async def prepare_kafka(settings: Settings) -> None:
    """Everything the worker needs from Kafka before it starts: to be let in and allowed
    what its stages do (checked again after the topics exist, as new topics may be
    checked only then), and its topics."""
    grants = access.worker_grants(settings)
    ids = access.transactional_ids(settings)
    await access.check_access(settings, grants, ids)
    await ensure_topics(settings)
    await access.check_access(settings, [g for g in grants if g.resource == "topic"])


class GracefulWorker(faust.Worker):
    """Faust's worker, with our stages stopped first and a bound on the whole shutdown.

    On SIGTERM/SIGINT the batch stages finish and commit the batch in flight, then Faust
    stops. Faust can hang when told to stop in the middle of a rebalance; everything of
    ours is committed by then (and its own side is at-least-once with dedup), so after
    ``timeout`` seconds the process exits anyway, with 0 if our stages stopped cleanly.
    A stage that cannot go on stops the worker the same way, with its exit code.
    """

    def __init__(
        self, worker: Worker, timeout: float, temporary_state: Path | None = None, **kwargs: Any
    ) -> None:
        super().__init__(worker.app, **kwargs)
        self._messaging = worker
        self._temporary_state = temporary_state
        self._timeout = timeout
        self._stages_stopped = False
        self._shutting_down = False
        worker.on_failure = self._on_sigterm  # a stage that cannot go on: as a SIGTERM

    async def on_first_start(self) -> None:
        await super().on_first_start()
        for stage in self._messaging.stages:
            self.app.add_future(stage())

    def _on_sigterm(self) -> None:
        self._begin_shutdown()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._begin_shutdown()
        super()._on_sigint()

    def _begin_shutdown(self) -> None:
        if self._shutting_down:
            return
        self._shutting_down = True

        async def stop_stages() -> None:
            await self._messaging.stop_stages()
            self._stages_stopped = True
            log.info("batch stages committed and stopped")

        asyncio.ensure_future(stop_stages(), loop=self.loop)
        watchdog = threading.Timer(self._timeout, self._force_exit)
        watchdog.daemon = True
        watchdog.start()

    def _force_exit(self) -> None:
        log.warning("shutdown took over %.0fs; exiting (stages stopped: %s)",
                    self._timeout, self._stages_stopped)
        logging.shutdown()
        if self._temporary_state is not None:  # os._exit skips the usual clean-up
            shutil.rmtree(self._temporary_state, ignore_errors=True)
        os._exit(self._messaging.failed or (0 if self._stages_stopped else 1))
