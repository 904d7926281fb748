"""The ingest stage in child processes, so that the hot path gets cores of its own.

One Python process runs one core at most, and the ingest is most of the worker's CPU
(decoding, validating, conversation state). With ``INGEST_PROCESSES=N`` the worker
starts N children, each an :class:`~streams.ingest.stage.IngestStage` with its own consumer
(same group: they share the events topic's partitions), its own transactional producer
(``<WORKER_ID>.ingest<i>``, so a restarted worker fences its previous children), and
exactly the same outputs as the in-process stage. The Faust process keeps the
aggregate agent, the risk stage and ``/metrics``; each child reports every committed
batch over a pipe and the parent counts it into the worker's metrics.

Children never outlive the worker: they ask the kernel to kill them when the parent
dies (``PR_SET_PDEATHSIG``), so ``kill -9`` of the worker is ``kill -9`` of the whole
set. A child that exits unasked (killed for memory, or a failure its stage could not
ride out) is started again and restores its partitions from the changelog, as after a
crash; only a child that exits with ``FATAL_EXIT_CODE`` (bad credentials, a missing
permission: retrying cannot mend it) takes the worker down.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from streams import collector
from streams.ingest.stage import IngestStage
from streams.kafka.io import being_cancelled
from streams.kafka.outage import (
    RETRY_FIRST_SECONDS,
    RETRY_MAX_SECONDS,
    CannotContinue,
    OutageReport,
    is_fatal,
)
from streams.logs import setup_logging
from streams.pipeline_metrics import BatchReport
from streams.settings import Settings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
FATAL_EXIT_CODE = 2  # a child that exits so is not restarted: retrying cannot mend it
# After stop() (the batch in flight committed, partitions released, clients closed), the
# batch loop has this long to notice. aiokafka's getmany() waits for a rebalance in
# progress to end, with no timeout: a child stopped while its consumer was joining (as
# soon as a worker starts, or during a rebalance) never got out of it, and held the
# whole worker's shutdown until the 20 s deadline, which then exited 1.
LOOP_END_SECONDS = 2.0
STEADY_CHILD_SECONDS = 60.0  # a child that lived this long died of something new


class IngestProcesses:
    """Starts, watches and stops the ingest children; forwards their reports."""

    name = "ingest"

    def __init__(
        self, settings: Settings, report: Callable[[BatchReport | OutageReport], object]
    ) -> None:
        self.settings = settings
        self.report = report
        self._children: list[tuple[BaseProcess, Connection]] = []
        self._stopping = False
        self._ended: asyncio.Future[None] | None = None
        self.restarts = 0
        self._born: dict[int, float] = {}
        self._quick_deaths: dict[int, int] = dict.fromkeys(range(settings.ingest_processes), 0)
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        self._ended = asyncio.get_running_loop().create_future()
        for index in range(self.settings.ingest_processes):
            self._children.append(self._spawn(index))
        log.info("ingest runs in %d child processes: %s", len(self._children),
                 [p.pid for p, _ in self._children])

    def _spawn(self, index: int) -> tuple[BaseProcess, Connection]:
        # spawn, not fork: a fork would copy a running event loop and live Kafka clients
        context = multiprocessing.get_context("spawn")
        settings = self.settings.model_copy(
            update={"worker_id": f"{self.settings.worker_id}.ingest{index}"}
        )
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(
            target=run_child,
            args=(settings, str(index), sender, os.getpid(), self.settings.worker_id),
            name=f"ingest-{index}",
        )
        process.start()
        self._born[index] = asyncio.get_running_loop().time()
        sender.close()  # the child holds the only writer: EOF when it exits
        asyncio.get_running_loop().add_reader(
            receiver.fileno(), self._receive, index, process, receiver
        )
        return process, receiver

    async def run(self) -> None:
        """Until stopped; raises if a child ends on an error that restarting cannot mend."""
        assert self._ended is not None, "start() first"
        await self._ended

    def _receive(self, index: int, process: BaseProcess, receiver: Connection) -> None:
        try:
            while receiver.poll():
                self.report(receiver.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(receiver.fileno())
            receiver.close()
            if not self._stopping and self._ended is not None and not self._ended.done():
                self._watch(asyncio.ensure_future(self._child_ended(index, process)))

    def _watch(self, task: asyncio.Future[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _child_ended(self, index: int, process: BaseProcess) -> None:
        """A child exited unasked: a fatal error ends the worker; anything else (killed
        for memory, a failure its stage could not ride out) gets a new child, which
        restores the partitions' state from the changelog, as after a crash. A child
        that keeps dying is started again more and more slowly."""
        assert self._ended is not None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, process.join, 5)
        # whatever the child was saying about Kafka ends with it
        self.report(OutageReport("ingest", str(index), None))
        what = f"ingest process {process.name} (pid {process.pid}) exited with {process.exitcode}"
        if process.exitcode == FATAL_EXIT_CODE:
            if not self._ended.done():
                self._ended.set_exception(CannotContinue(what))
            return
        lived = loop.time() - self._born[index]
        self._quick_deaths[index] = 0 if lived > STEADY_CHILD_SECONDS else self._quick_deaths[index] + 1
        delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** self._quick_deaths[index])
        self.restarts += 1
        log.warning("%s; starting it again in %.1f s (restart %d)", what, delay, self.restarts)
        await asyncio.sleep(delay)
        if not self._stopping:
            self._children[index] = self._spawn(index)

    async def stop(self) -> None:
        """SIGTERM each child (it commits its batch in flight), wait, SIGKILL stragglers."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        loop = asyncio.get_running_loop()
        for process, _ in self._children:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = loop.time() + self.settings.shutdown_timeout_seconds
        for process, receiver in self._children:
            await loop.run_in_executor(None, process.join, max(0.0, deadline - loop.time()))
            if process.is_alive():
                log.warning("ingest process %s did not stop in time: killing it", process.pid)
                process.kill()
                await loop.run_in_executor(None, process.join)
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(receiver.fileno())
                receiver.close()
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)


# --- the child -------------------------------------------------------------------------
def run_child(
    settings: Settings, source: str, sender: Connection, parent: int, state_owner: str
) -> None:
    """Entry point of one ingest child process."""
    _die_with(parent)
    collector.tune_for_large_state()
    setup_logging(settings, "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    code = asyncio.run(_serve(settings, source, sender, state_owner))
    sender.close()
    sys.exit(code)


def _die_with(parent: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before we could ask
        os._exit(1)


async def _serve(settings: Settings, source: str, sender: Connection, state_owner: str) -> int:
    stage = IngestStage(settings, sender.send, report_source=source, state_owner=state_owner)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async def serve() -> None:
        await stage.start()
        await stage.run()

    runner = asyncio.create_task(serve())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    await stage.stop()
    stopper.cancel()
    await asyncio.wait({runner}, timeout=LOOP_END_SECONDS)
    if not runner.done():
        log.info("ingest process %s: its batch loop had not ended %.0f s after the stop "
                 "(at %s); cancelled: nothing of it is left to commit", source,
                 LOOP_END_SECONDS, _awaiting(runner))
        runner.cancel()
    try:
        await runner
    except asyncio.CancelledError:
        if being_cancelled():
            raise
    except Exception as exc:
        if is_fatal(exc):
            log.error("ingest process %s cannot go on: %s", source, exc)
            return FATAL_EXIT_CODE
        log.exception("ingest process %s failed", source)
        return 1
    log.info("ingest process %s committed and stopped", source)
    return 0


def _awaiting(task: asyncio.Task[None]) -> str:
    """Where a suspended task waits: its chain of awaited coroutines, innermost last."""
    frames, awaited = [], task.get_coro()
    while awaited is not None and getattr(awaited, "cr_frame", None) is not None:
        frame = awaited.cr_frame
        frames.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename.rsplit('/', 1)[-1]}"
                      f":{frame.f_lineno})")
        awaited = awaited.cr_await
    return " > ".join(frames) or "unknown"
