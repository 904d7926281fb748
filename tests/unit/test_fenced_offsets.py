"""The transactional offset commit that a replaced group member cannot make (KIP-447):
its encoding, and what a refusal does to the transaction."""

from __future__ import annotations

import asyncio
import gc
from io import BytesIO
from types import SimpleNamespace
from typing import Any

from aiokafka.producer.transaction_manager import TransactionManager
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from streams.kafka.fenced_offsets import (
    FencedTxnOffsetCommitHandler,
    FencedTxnOffsetCommitRequest,
    TxnOffsetCommitRequest_v3,
    TxnOffsetCommitResponse_v3,
    fence_offset_commits,
    request_fields,
)

OFFSETS = {TopicPartition("t.events", 1): OffsetAndMetadata(120, ""),
           TopicPartition("t.events", 0): OffsetAndMetadata(77, "")}


def test_the_request_names_the_member_and_its_generation() -> None:
    fields = request_fields("tx-w0", "group", 4000, 3, (7, "member-a", "group-w0"), OFFSETS)
    struct = FencedTxnOffsetCommitRequest(fields).prepare({28: (0, 5)})
    assert isinstance(struct, TxnOffsetCommitRequest_v3)  # the broker's v0 would not fence
    decoded = TxnOffsetCommitRequest_v3.SCHEMA.decode(BytesIO(struct.encode()))
    assert decoded[:7] == ("tx-w0", "group", 4000, 3, 7, "member-a", "group-w0")
    assert decoded[7] == [("t.events", [(0, 77, -1, "", {}), (1, 120, -1, "", {})], {})]


class _Transactions:
    transactional_id, producer_id, producer_epoch = "tx-w0", 4000, 3

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.committed: list[tuple[TopicPartition, int]] = []
        self._transaction_waiter = SimpleNamespace(exception=lambda: self.error)

    def error_transaction(self, exc: BaseException) -> None:
        self.error = exc

    def offset_committed(self, tp: TopicPartition, offset: int, group_id: str) -> None:
        self.committed.append((tp, offset))


def _answer(error_code: int, txn: Any = None) -> tuple[Any, Any]:
    txn = txn or _Transactions()
    sender = SimpleNamespace(_txn_manager=txn, _coordinator_dead=lambda kind: None,
                             _retry_backoff=0.1)
    handler = FencedTxnOffsetCommitHandler(sender, OFFSETS, "group", lambda: (7, "m", None))
    response = TxnOffsetCommitResponse_v3(
        0, [("t.events", [(0, error_code, {}), (1, error_code, {})], {})], {}
    )
    return txn, handler.handle_response(response)


def test_a_replaced_member_has_its_transaction_aborted() -> None:
    for code in (22, 25, 82):  # illegal generation, unknown member, fenced instance
        txn, _ = _answer(code)
        assert txn.error is not None and not txn.committed


def test_an_accepted_commit_is_recorded() -> None:
    txn, _ = _answer(0)
    assert txn.error is None
    assert sorted(txn.committed) == [(TopicPartition("t.events", 0), 77),
                                     (TopicPartition("t.events", 1), 120)]


def test_a_refusal_leaves_no_error_for_asyncio_to_log() -> None:
    """The stage reads the refusal from send_offsets_to_transaction and starts over;
    aiokafka's copy on the transaction's waiter must not end as "Future exception was
    never retrieved" (an ERROR with a traceback in the log, per fencing)."""

    async def refused() -> list[str]:
        reported: list[str] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: reported.append(context["message"])
        )
        txn = TransactionManager("tx-w0", 60_000)
        txn.set_pid_and_epoch(4000, 3)
        txn.begin_transaction()
        _answer(25, txn)
        assert txn.state.name == "ABORTABLE_ERROR"
        del txn
        gc.collect()
        return reported

    assert asyncio.run(refused()) == []


def _commit_as(coordinator: Any, lost_while_looking_up: bool = False) -> TransactionManager:
    """One offset commit through the fenced path; nothing may reach the broker."""

    async def commit() -> TransactionManager:
        txn = TransactionManager("tx-w0", 60_000)
        txn.set_pid_and_epoch(4000, 3)
        txn.begin_transaction()

        async def find_coordinator(*_: Any) -> int:
            if lost_while_looking_up:  # the session ends while the look-up waits
                coordinator.generation, coordinator.member_id = -1, ""
            return 1

        async def send(*_: Any, **__: Any) -> Any:
            raise AssertionError("nothing may be sent")

        sender = SimpleNamespace(_txn_manager=txn, _find_coordinator=find_coordinator,
                                 _retry_backoff=0.1, client=SimpleNamespace(send=send))
        consumer = SimpleNamespace(_coordinator=coordinator, _group_instance_id="group-w0")
        fence_offset_commits(SimpleNamespace(_sender=sender), consumer)
        await sender._do_txn_offset_commit(OFFSETS, "group")
        return txn

    return asyncio.run(commit())


def test_a_member_without_membership_commits_nothing() -> None:
    """After its session ended (a frozen worker), aiokafka resets the member to
    generation -1 and no member id, which the broker would take as a commit from outside
    the group and not check: the transaction is refused before anything is sent."""
    txn = _commit_as(SimpleNamespace(generation=-1, member_id=""))
    assert txn.state.name == "ABORTABLE_ERROR"


def test_a_membership_lost_during_the_coordinator_look_up_commits_nothing() -> None:
    txn = _commit_as(SimpleNamespace(generation=4, member_id="m-1"), lost_while_looking_up=True)
    assert txn.state.name == "ABORTABLE_ERROR"
