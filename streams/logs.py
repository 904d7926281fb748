"""Logging set-up for every command and process, and a limit on repeated client logs.

While a broker is down, aiokafka logs each failed connection, metadata refresh and
fetch: hundreds of ERROR lines a second (8,000 in a 15-second outage, measured), in
which the one line that says what the worker does about it is lost. The stages say
that once per outage (:mod:`streams.kafka.outage`); :class:`RepeatLimit` lets each of the
client's messages through once per interval, with a count of what it held back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from streams.settings import Settings

CLIENT_LOGGERS = ("aiokafka",)  # and every logger below them
REPEAT_INTERVAL_SECONDS = 60.0


@dataclass
class RepeatLimit(logging.Filter):
    """At most one warning or error per logger and message template per ``interval``
    seconds; the one let through after a quiet spell says how many like it were held
    back. Informational records (a rebalance's assignment, say) always pass: they come
    once per event, not once per retry."""

    interval: float = REPEAT_INTERVAL_SECONDS
    clock: Callable[[], float] = time.monotonic
    _last: dict[tuple[str, str], float] = field(default_factory=dict)
    _held: dict[tuple[str, str], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last {now - last:.0f} s)"
        return True


def limit_client_repeats(interval: float = REPEAT_INTERVAL_SECONDS) -> RepeatLimit:
    """Attach one :class:`RepeatLimit` to every Kafka client logger. On the loggers,
    not on handlers: Faust replaces the root handlers when its worker starts."""
    import aiokafka.admin
    import aiokafka.consumer
    import aiokafka.producer  # noqa: F401

    limit = RepeatLimit(interval)
    names = [
        name for name in list(logging.Logger.manager.loggerDict)
        if any(name == p or name.startswith(p + ".") for p in CLIENT_LOGGERS)
    ]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatLimit) for f in logger.filters):
            logger.addFilter(limit)
    return limit


def setup_logging(settings: Settings, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s"
                  ) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format=fmt)
    limit_client_repeats()
