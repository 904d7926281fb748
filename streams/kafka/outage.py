"""A stage's view of whether Kafka answers it: outages, told once each.

aiokafka logs every failed connection and retry, several a second while a broker is
down; an operator needs one line when a stage loses Kafka (what it was doing, what it
does about it), one when it has Kafka back (after how long), and a gauge in between.
Pure: the stages report failures and successes, :class:`Outage` decides what is news.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    IncompatibleBrokerVersion,
    InconsistentGroupProtocolError,
    InvalidGroupIdError,
    InvalidSessionTimeoutError,
    InvalidTransactionTimeout,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    UnsupportedSaslMechanismError,
    UnsupportedVersionError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 0.5, 5.0
ATTEMPT_TIMEOUT_SECONDS = 30.0  # a stalled broker accepts connections and says nothing

class CannotContinue(Exception):
    """A part of the worker ended on an error that retrying cannot mend (raised where
    the original cannot travel, e.g. from an ingest child's exit code)."""


# Not a fault of the broker's health: retrying cannot help, so the worker stops.
FATAL_ERRORS = (
    CannotContinue,
    AuthenticationFailedError, AuthenticationMethodNotSupported, SaslAuthenticationFailed,
    IllegalSaslStateError, UnsupportedSaslMechanismError, TopicAuthorizationFailedError,
    GroupAuthorizationFailedError, ClusterAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
    # the configuration, refused by the broker
    InvalidTransactionTimeout, InvalidSessionTimeoutError, InvalidGroupIdError,
    InconsistentGroupProtocolError, UnsupportedVersionError, IncompatibleBrokerVersion,
)
# What a broker fault looks like to a client: worth another try.
RETRIABLE_ERRORS = (KafkaError, OSError, TimeoutError)


def is_fatal(exc: BaseException) -> bool:
    """An error retrying cannot mend, or one caused by such an error (aiokafka's sender
    wraps what the broker said in a KafkaError of its own)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, FATAL_ERRORS):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


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
    """A stage's contact with Kafka. Each activity (connecting, committing a batch,
    reading its partitions) fails and succeeds on its own; the outage begins when the
    first fails and ends when every one that failed has succeeded again, so two signals
    of the same outage never make two."""

    stage: str
    source: str = ""
    on_change: Callable[[OutageReport], object] = lambda report: None
    response: str = STAGE_RESPONSE  # what the stage does meanwhile, for the log line
    clock: Callable[[], float] = time.monotonic
    started: float | None = None  # clock time of the first failure of this outage
    count: int = 0  # outages so far
    _failing: set[str] = field(default_factory=set, repr=False)

    def failed(self, doing: str, exc: BaseException | None = None, *,
               began: float | None = None) -> None:
        """``began``: clock time the failing attempt started, when it failed by taking
        too long (the outage is older than the moment it was noticed)."""
        self._failing.add(doing)
        if self.started is not None:
            return  # the same outage: aiokafka has logged the retry already
        now = self.clock()
        self.started = now if began is None else min(began, now)
        self.count += 1
        log.warning("%s lost Kafka while %s (%s); %s", self.stage, doing, _describe(exc),
                    self.response)
        self.on_change(OutageReport(self.stage, self.source, time.time() - (now - self.started)))

    def succeeded(self, doing: str) -> None:
        self._failing.discard(doing)
        if self.started is None or self._failing:  # none, or something else still fails
            return
        seconds = self.clock() - self.started
        self.started = None
        log.warning("%s has Kafka back after %.1f s", self.stage, seconds)
        self.on_change(OutageReport(self.stage, self.source, None))

    def seconds(self) -> float:
        """How long the current outage has lasted; 0 when there is none."""
        return 0.0 if self.started is None else self.clock() - self.started


async def keep_trying(
    outage: Outage, doing: str, attempt: Callable[[], Awaitable[T]],
    after_failure: Callable[[], Awaitable[object]] | None = None,
    stop: asyncio.Event | None = None,
) -> T | None:
    """``attempt()`` until it succeeds, with a growing pause between tries, each try
    bounded in time; None if ``stop`` is set first. While it fails that is one outage
    (one log line). Only what a broker fault raises is retried: an error retrying cannot
    mend (:func:`is_fatal`), or one that is not Kafka's at all (a bug, a bad setting),
    is raised at once."""
    delay = RETRY_FIRST_SECONDS
    while stop is None or not stop.is_set():
        try:
            async with asyncio.timeout(ATTEMPT_TIMEOUT_SECONDS):
                result = await attempt()
            outage.succeeded(doing)
            return result
        except RETRIABLE_ERRORS as exc:
            if is_fatal(exc):
                raise
            outage.failed(doing, exc)
            if after_failure is not None:
                await after_failure()
        await pause(delay, stop)
        delay = min(RETRY_MAX_SECONDS, delay * 2)
    return None


async def pause(seconds: float, stop: asyncio.Event | None) -> None:
    """Sleep, or less if ``stop`` is set meanwhile."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    name, text = type(exc).__name__, str(exc)
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"  # aiokafka's name themselves
