"""Outages told once each, retries that stop only for errors retrying cannot mend, and
a limit on the Kafka client's repeated log lines."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
)

from streams.kafka import outage as outage_module
from streams.kafka.outage import Outage, OutageReport, is_fatal, keep_trying
from streams.logs import RepeatLimit


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_told_once_when_it_begins_and_once_when_it_ends(caplog) -> None:
    clock, reports = Clock(), []
    outage = Outage("ingest", "0", reports.append, clock=clock)
    caplog.set_level(logging.WARNING, logger="streams.kafka.outage")
    for _ in range(50):  # fifty failed retries, one outage
        outage.failed("committing a batch", KafkaConnectionError("Connection closed"))
        clock.now += 0.1
    assert outage.seconds() == pytest.approx(5.0)
    outage.succeeded("committing a batch")
    outage.succeeded("committing a batch")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("ingest lost Kafka while committing a batch "
                               "(KafkaConnectionError: Connection closed)")
    assert lines[1] == "ingest has Kafka back after 5.0 s"
    assert [r.since is None for r in reports] == [False, True]
    assert all(isinstance(r, OutageReport) and r.stage == "ingest" for r in reports)
    assert outage.count == 1 and outage.seconds() == 0.0


def test_an_outage_ends_only_when_everything_that_failed_succeeds_again() -> None:
    clock, reports = Clock(), []
    outage = Outage("ingest", on_change=reports.append, clock=clock)
    outage.failed("reading its partitions")
    outage.failed("committing a batch")
    outage.succeeded("reading its partitions")  # fetches answer, commits do not yet
    assert outage.started is not None and len(reports) == 1
    outage.succeeded("connecting")  # never failed: changes nothing
    assert outage.started is not None
    outage.succeeded("committing a batch")
    assert outage.started is None and [r.since is None for r in reports] == [False, True]


def test_a_stall_noticed_late_dates_from_when_the_attempt_began() -> None:
    clock = Clock()
    outage = Outage("risk", clock=clock)
    outage.failed("committing a batch", TimeoutError("no answer for 5 s"), began=95.0)
    assert outage.seconds() == 5.0


@pytest.mark.parametrize(
    ("error", "fatal"),
    [
        (KafkaConnectionError(), False),
        (TimeoutError(), False),
        (SaslAuthenticationFailed(), True),
        (TopicAuthorizationFailedError(), True),
    ],
)
def test_only_errors_retrying_cannot_mend_are_fatal(error: Exception, fatal: bool) -> None:
    assert is_fatal(error) is fatal


def test_keep_trying_retries_until_kafka_answers(monkeypatch) -> None:
    monkeypatch.setattr(outage_module, "RETRY_FIRST_SECONDS", 0.001)
    attempts, cleanups = [], []
    outage = Outage("worker")

    async def attempt() -> str:
        attempts.append(1)
        if len(attempts) < 4:
            raise KafkaConnectionError("Unable to bootstrap")
        return "topics"

    async def cleanup() -> None:
        cleanups.append(1)

    result = asyncio.run(keep_trying(outage, "creating its topics", attempt, cleanup))
    assert (result, len(attempts), len(cleanups), outage.count) == ("topics", 4, 3, 1)
    assert outage.started is None


@pytest.mark.parametrize(
    "error",
    [
        SaslAuthenticationFailed("bad password"),
        # the sender wraps what the broker said: the cause decides
        KafkaError("Unexpected error during batch delivery"),
        ValueError("not a Kafka fault: a bug or a bad setting"),
    ],
)
def test_keep_trying_gives_up_at_once_on_what_retrying_cannot_mend(error: Exception) -> None:
    attempts = []
    if type(error) is KafkaError:
        error.__cause__ = TopicAuthorizationFailedError()

    async def attempt() -> None:
        attempts.append(1)
        raise error

    with pytest.raises(type(error)):
        asyncio.run(keep_trying(Outage("ingest"), "connecting", attempt))
    assert attempts == [1]


def test_keep_trying_stops_when_told(monkeypatch) -> None:
    async def run() -> object:
        stop = asyncio.Event()

        async def attempt() -> None:
            stop.set()  # a SIGTERM while Kafka is away
            raise KafkaConnectionError("Unable to bootstrap")

        return await asyncio.wait_for(
            keep_trying(Outage("ingest"), "connecting", attempt, stop=stop), 2
        )

    assert asyncio.run(run()) is None


def record(msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("aiokafka.conn", level, __file__, 1, msg, args, None)


def test_repeat_limit_lets_a_message_through_once_an_interval_and_counts_the_rest() -> None:
    clock = Clock(0.0)
    limit = RepeatLimit(interval=60.0, clock=clock)
    template = "Unable connect to node with id %s: %s"
    assert limit.filter(record(template, 1, "refused"))
    connects = fetches = 0
    for i in range(500):
        clock.now = i * 0.1
        connects += limit.filter(record(template, 1, "refused"))
        fetches += limit.filter(record("Failed fetch messages from %s", 1))
    assert (connects, fetches) == (0, 1)  # each template once an interval, on its own
    clock.now = 61.0
    again = record(template, 1, "refused")
    assert limit.filter(again)
    assert again.getMessage() == (
        "Unable connect to node with id 1: refused (500 more like this in the last 61 s)"
    )
    assigned = "Setting newly assigned partitions %s"
    assert all(limit.filter(record(assigned, i, level=logging.INFO)) for i in range(3))
