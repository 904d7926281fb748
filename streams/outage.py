"""A stage's view of whether Kafka answers it: outages, told once each.

aiokafka logs every failed connection and retry, several a second while a broker is
down; an operator needs one line when a stage loses Kafka (what it was doing, what it
does about it), one when it has Kafka back (after how long), and a gauge in between.
Pure: the stages report failures and successes, :class:`Outage` decides what is news.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    IllegalSaslStateError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnsupportedSaslMechanismError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 0.5, 5.0
ATTEMPT_TIMEOUT_SECONDS = 30.0  # a stalled broker accepts connections and says nothing

# Not a fault of the broker's health: retrying cannot help, so the worker stops.
FATAL_ERRORS = (
    AuthenticationFailedError, AuthenticationMethodNotSupported, SaslAuthenticationFailed,
    IllegalSaslStateError, UnsupportedSaslMechanismError, TopicAuthorizationFailedError,
    GroupAuthorizationFailedError, ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)


def is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, FATAL_ERRORS)


@dataclass(frozen=True, slots=True)
class OutageReport:
    """A stage's outage began (``since`` = wall time) or ended (``since`` = None); plain
    data, so an ingest child can send it over its pipe."""

    stage: str
    source: str
    since: float | None


STAGE_RESPONSE = "it holds the watermark where it is and retries from its last commit"


@dataclass(slots=True)
class Outage:
    stage: str
    source: str = ""
    on_change: Callable[[OutageReport], object] = lambda report: None
    response: str = STAGE_RESPONSE  # what the stage does meanwhile, for the log line
    clock: Callable[[], float] = time.monotonic
    started: float | None = None  # clock time of the first failure of this outage
    count: int = 0  # outages so far
    _what: str = field(default="", repr=False)

    def failed(self, doing: str, exc: BaseException | None = None, *,
               began: float | None = None) -> None:
        """``began``: clock time the failing attempt started, when it failed by taking
        too long (the outage is older than the moment it was noticed)."""
        if self.started is not None:
            return  # the same outage: aiokafka has logged the retry already
        now = self.clock()
        self.started = now if began is None else min(began, now)
        self.count += 1
        self._what = doing
        log.warning("%s lost Kafka while %s (%s); %s", self.stage, doing, _describe(exc),
                    self.response)
        self.on_change(OutageReport(self.stage, self.source, time.time() - (now - self.started)))

    def succeeded(self) -> None:
        if self.started is None:
            return
        seconds = self.clock() - self.started
        self.started = None
        log.warning("%s has Kafka back after %.1f s (lost while %s)", self.stage, seconds,
                    self._what)
        self.on_change(OutageReport(self.stage, self.source, None))

    def seconds(self) -> float:
        """How long the current outage has lasted; 0 when there is none."""
        return 0.0 if self.started is None else self.clock() - self.started


async def keep_trying(
    outage: Outage, doing: str, attempt: Callable[[], Awaitable[T]],
    after_failure: Callable[[], Awaitable[object]] | None = None,
) -> T:
    """``attempt()`` until it succeeds, with a growing pause between tries, each try
    bounded in time. While it fails that is one outage (one log line); an error that
    retrying cannot mend (:func:`is_fatal`) is raised at once."""
    delay = RETRY_FIRST_SECONDS
    while True:
        try:
            async with asyncio.timeout(ATTEMPT_TIMEOUT_SECONDS):
                result = await attempt()
            outage.succeeded()
            return result
        except Exception as exc:
            if is_fatal(exc):
                raise
            outage.failed(doing, exc)
            if after_failure is not None:
                await after_failure()
        await asyncio.sleep(delay)
        delay = min(RETRY_MAX_SECONDS, delay * 2)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    name, text = type(exc).__name__, str(exc)
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"  # aiokafka's name themselves
