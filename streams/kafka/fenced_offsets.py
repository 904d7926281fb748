"""Input offsets committed in a transaction only by the group member that owns them.

A stage commits its input offsets inside its output transaction. aiokafka sends that
commit as TxnOffsetCommit version 0, which names no group generation or member, so the
broker accepts it from a member the group has already replaced: a worker that lost
Kafka for longer than its session (a broker stall) comes back and commits the batch
it had in flight, after the partition's new owner read the old committed offset and
began the same events again, in batches of other boundaries. Both sets of partials
are committed, and the owners' marks cannot tell overlapping batches apart: a window
counted part of its events twice (seen in the 20-second broker stall test).

Version 3 (KIP-447) carries the member's generation, member id and instance id; the
group coordinator refuses the commit of a member that is no longer current, the
transaction is aborted, and the stage starts over from what the group committed.
:func:`fence_offset_commits` makes a transactional producer send that version, with
the group metadata of the stage's consumer at the moment of the commit. A consumer with
no membership at that moment (generation -1, no member id: its session ended) commits
nothing: the broker does not check such a commit against the group at all.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import errors as Errors
from aiokafka.client import CoordinationType
from aiokafka.producer.sender import TxnOffsetCommitHandler
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)
from aiokafka.structs import TopicPartition

# what the group coordinator answers a member that is no longer the partition's owner:
# ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID (not in aiokafka's errors)
FENCED_CODES = frozenset({22, 25, 82})
NO_LEADER_EPOCH = -1


class TxnOffsetCommitResponse_v3(Response):
    API_KEY = 28
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("topics", CompactArray(
            ("name", CompactString("utf-8")),
            ("partitions", CompactArray(
                ("partition_index", Int32),
                ("error_code", Int16),
                ("tags", TaggedFields),
            )),
            ("tags", TaggedFields),
        )),
        ("tags", TaggedFields),
    )


class TxnOffsetCommitRequest_v3(RequestStruct):
    FLEXIBLE_VERSION = True
    API_KEY = 28
    API_VERSION = 3
    RESPONSE_TYPE = TxnOffsetCommitResponse_v3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("group_id", CompactString("utf-8")),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("generation_id", Int32),
        ("member_id", CompactString("utf-8")),
        ("group_instance_id", CompactString("utf-8")),  # nullable
        ("topics", CompactArray(
            ("name", CompactString("utf-8")),
            ("partitions", CompactArray(
                ("partition_index", Int32),
                ("committed_offset", Int64),
                ("committed_leader_epoch", Int32),
                ("committed_metadata", CompactString("utf-8")),
                ("tags", TaggedFields),
            )),
            ("tags", TaggedFields),
        )),
        ("tags", TaggedFields),
    )


class FencedTxnOffsetCommitRequest(Request[TxnOffsetCommitRequest_v3]):
    API_KEY = 28

    def __init__(self, fields: tuple[Any, ...]) -> None:
        self._fields = fields

    def build(self, request_struct_class: type[TxnOffsetCommitRequest_v3]) -> Any:
        return request_struct_class(*self._fields)


GroupMetadata = tuple[int, str, str | None]  # generation, member id, group instance id


def request_fields(
    transactional_id: str, group_id: str, producer_id: int, producer_epoch: int,
    member: GroupMetadata, offsets: dict[TopicPartition, Any],
) -> tuple[Any, ...]:
    """The v3 request's fields: offsets by topic, each with its metadata."""
    by_topic: dict[str, list[tuple[Any, ...]]] = collections.defaultdict(list)
    for tp, offset in sorted(offsets.items()):
        by_topic[tp.topic].append(
            (tp.partition, offset.offset, NO_LEADER_EPOCH, offset.metadata or "", {})
        )
    generation, member_id, instance_id = member
    return (
        transactional_id, group_id, producer_id, producer_epoch, generation, member_id,
        instance_id, [(topic, partitions, {}) for topic, partitions in by_topic.items()], {},
    )


class FencedTxnOffsetCommitHandler(TxnOffsetCommitHandler):
    def __init__(self, sender: Any, offsets: Any, group_id: str,
                 member: Callable[[], GroupMetadata]) -> None:
        super().__init__(sender, offsets, group_id)
        self._member = member

    async def do(self, node_id: int) -> bool:
        # Checked here, not before the coordinator look-up: the membership can end
        # while that waits, and nothing awaits between this and create_request().
        generation, member_id, _ = self._member()
        if generation < 0 or not member_id:
            # No membership (the session ended while the worker was frozen, and the
            # consumer reset it): the broker takes generation -1 with no member id as
            # a commit from outside any group and does not check it, so a frozen
            # worker that woke up committed its batch after the new owner took over.
            _refuse(self._sender, f"group {self._group_id}: this member has no "
                    "membership (its session ended): its transaction is aborted")
            return False
        return bool(await super().do(node_id))

    def create_request(self) -> FencedTxnOffsetCommitRequest:
        txn = self._sender._txn_manager
        return FencedTxnOffsetCommitRequest(request_fields(
            txn.transactional_id, self._group_id, txn.producer_id, txn.producer_epoch,
            self._member(), self._offsets,
        ))

    def handle_response(self, resp: Any) -> Any:
        for _, partitions, _ in resp.topics:
            for _, error_code, _ in partitions:
                if error_code in FENCED_CODES:  # the batch is not ours to commit any more
                    _refuse(self._sender, f"group {self._group_id} has replaced this "
                            f"member (error {error_code}): its transaction is aborted")
                    return None
        # anything else as aiokafka handles version 0, in the shape it reads
        return super().handle_response(SimpleNamespace(errors=[
            (topic, [(partition, code) for partition, code, _ in partitions])
            for topic, partitions, _ in resp.topics
        ]))


def _refuse(sender: Any, why: str) -> None:
    """Abort the transaction in flight: its offsets are not this member's to commit."""
    txn = sender._txn_manager
    txn.error_transaction(Errors.CommitFailedError(why))
    # The stage gets the error from send_offsets_to_transaction and starts over without
    # committing, so nothing reads the copy aiokafka also gives the transaction's
    # waiter: asyncio would log it as "Future exception was never retrieved", a
    # traceback per fencing.
    txn._transaction_waiter.exception()


def group_metadata(consumer: AIOKafkaConsumer) -> GroupMetadata:
    """The consumer's current generation, member id and instance id (none: -1, "" and
    the instance id, which :func:`fence_offset_commits` does not send)."""
    coordinator = consumer._coordinator
    if coordinator is None:
        return -1, "", consumer._group_instance_id
    return coordinator.generation, coordinator.member_id, consumer._group_instance_id


def fence_offset_commits(producer: AIOKafkaProducer, consumer: AIOKafkaConsumer) -> None:
    """Make ``producer`` (started, transactional) commit offsets as ``consumer``'s
    current group member, so that the group refuses them once it has moved on."""
    sender = producer._sender

    async def txn_offset_commit(offsets: Any, group_id: str) -> None:
        if not offsets:
            return
        try:
            node_id = await sender._find_coordinator(CoordinationType.GROUP, group_id)
        except Errors.GroupAuthorizationFailedError as exc:
            sender._txn_manager.error_transaction(exc)
            return
        handler = FencedTxnOffsetCommitHandler(
            sender, offsets, group_id, lambda: group_metadata(consumer)
        )
        await handler.do(node_id)

    sender._do_txn_offset_commit = txn_offset_commit
