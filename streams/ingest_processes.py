"""The ingest stage in child processes, so that the hot path gets cores of its own.

One Python process runs one core at most, and the ingest is most of the worker's CPU
(decoding, validating, conversation state). With ``INGEST_PROCESSES=N`` the worker
starts N children, each an :class:`~streams.ingest.IngestStage` with its own consumer
(same group: they share the events topic's partitions), its own transactional producer
(``<WORKER_ID>.ingest<i>``, so a restarted worker fences its previous children), and
exactly the same outputs as the in-process stage. The Faust process keeps the
aggregate agent, the risk stage and ``/metrics``; each child reports every committed
batch over a pipe and the parent counts it into the worker's metrics.

Children never outlive the worker: they ask the kernel to kill them when the parent
dies (``PR_SET_PDEATHSIG``), so ``kill -9`` of the worker is ``kill -9`` of the whole
set, and a child that exits unasked takes the worker down (restart, restore, resume).
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
from streams.ingest import IngestStage
from streams.pipeline_metrics import BatchReport
from streams.settings import Settings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class IngestProcesses:
    """Starts, watches and stops the ingest children; forwards their reports."""

    name = "ingest"

    def __init__(self, settings: Settings, report: Callable[[BatchReport], object]) -> None:
        self.settings = settings
        self.report = report
        self._children: list[tuple[BaseProcess, Connection]] = []
        self._stopping = False
        self._ended: asyncio.Future[None] | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ended = loop.create_future()
        # spawn, not fork: a fork would copy a running event loop and live Kafka clients
        context = multiprocessing.get_context("spawn")
        for index in range(self.settings.ingest_processes):
            settings = self.settings.model_copy(
                update={"worker_id": f"{self.settings.worker_id}.ingest{index}"}
            )
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(
                target=run_child, args=(settings, str(index), sender, os.getpid()),
                name=f"ingest-{index}",
            )
            process.start()
            sender.close()  # the child holds the only writer: EOF when it exits
            loop.add_reader(receiver.fileno(), self._receive, process, receiver)
            self._children.append((process, receiver))
        log.info("ingest runs in %d child processes: %s", len(self._children),
                 [p.pid for p, _ in self._children])

    async def run(self) -> None:
        """Until stopped; raises if a child exits on its own."""
        assert self._ended is not None, "start() first"
        await self._ended

    def _receive(self, process: BaseProcess, receiver: Connection) -> None:
        try:
            while receiver.poll():
                self.report(receiver.recv())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(receiver.fileno())
            if not self._stopping and self._ended is not None and not self._ended.done():
                process.join(5)
                self._ended.set_exception(RuntimeError(
                    f"ingest process {process.name} (pid {process.pid}) exited "
                    f"with {process.exitcode}"
                ))

    async def stop(self) -> None:
        """SIGTERM each child (it commits its batch in flight), wait, SIGKILL stragglers."""
        self._stopping = True
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
def run_child(settings: Settings, source: str, sender: Connection, parent: int) -> None:
    """Entry point of one ingest child process."""
    _die_with(parent)
    collector.tune_for_large_state()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s",
    )
    code = asyncio.run(_serve(settings, source, sender))
    sender.close()
    sys.exit(code)


def _die_with(parent: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before we could ask
        os._exit(1)


async def _serve(settings: Settings, source: str, sender: Connection) -> int:
    stage = IngestStage(settings, sender.send, report_source=source)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stage.start()
    runner = asyncio.create_task(stage.run())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
    await stage.stop()
    stopper.cancel()
    try:
        await runner
    except Exception:
        log.exception("ingest process %s failed", source)
        return 1
    log.info("ingest process %s committed and stopped", source)
    return 0
