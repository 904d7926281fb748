"""The risk stage: per-sender activity, batch-at-a-time, exactly once by transactions.

It reads ``messaging.sender-activity`` (the ingest writes each batch's per-sender
counts to the partition of each sender, plus watermark marks), keeps one
:class:`~streams.risk.rules.RiskState` per partition and, in the same transaction as its
input offsets, publishes every flag to ``messaging.risk.flagged-senders`` and a
snapshot of the partition's state to a compacted changelog.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka.structs import TopicPartition

from streams.kafka.io import BatchWriter
from streams.kafka.outage import OutageReport
from streams.kafka.stage import TransactionalStage
from streams.risk.rules import RiskRules, RiskState
from streams.settings import Settings

log = logging.getLogger(__name__)

SNAPSHOT_KEY = b"snapshot"


class RiskStage(TransactionalStage[RiskState]):
    name = "risk"

    def __init__(
        self, settings: Settings, on_outage: Callable[[OutageReport], object] | None = None
    ) -> None:
        super().__init__(
            settings, settings.activity_topic, settings.risk_state_topic, max_batch=500,
            on_outage=on_outage,
        )
        self.rules = RiskRules.from_settings(settings)
        self.flags_published = 0

    def new_state(self, partition: int) -> RiskState:
        return RiskState(partition, self.settings.window_seconds, self.rules)

    def restore_record(self, state: RiskState, key: bytes | None, value: bytes | None) -> None:
        if key == SNAPSHOT_KEY and value is not None:
            state.restore(value)  # compacted: the last snapshot wins

    async def process(
        self, tp: TopicPartition, state: RiskState, messages: list[Any], writer: BatchWriter
    ) -> None:
        topic = self.settings.flagged_topic
        for message in messages:
            for flag in state.apply(orjson.loads(message.value)):
                await writer.add(topic, 0, flag.sender_id.encode(), orjson.dumps(flag.record()))
                self.flags_published += 1
        await writer.add(self.state_topic, tp.partition, SNAPSHOT_KEY, state.dumps())
