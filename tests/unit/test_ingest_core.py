"""The ingest core: first replies and their latency, channel of spam reports, lateness."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from streams.events import Event, MessageSent, SpamReported
from streams.ingest.conversations import BatchWindows, Conversation, PartitionCore

T0 = 1_790_000_040.0  # a 60 s window boundary


_ids = itertools.count()


def sent(ts: float, sender: str, recipient: str, first: bool, channel: str = "inmail",
         cid: str = "c-1") -> MessageSent:
    number = next(_ids)
    return MessageSent(
        event_id=f"e-{number}", ts=ts, conversation_id=cid, schema_version=1,
        message_id=f"msg-{number}", sender_id=sender, recipient_id=recipient,
        sender_type="recruiter", channel=channel, content_type="text", platform="web",
        entry_point="search", first_in_conversation=first,
    )


def run(core: PartitionCore, events: list[Event]) -> tuple[dict, set[str]]:
    batch = BatchWindows()
    for event in events:
        core.add(event, batch)
    for conversation_id, (raw, _, _) in batch.touched.items():  # as it was last changed
        assert raw == core.conversation(conversation_id).dumps()  # type: ignore[union-attr]
    return batch.counts, set(batch.touched)


def test_first_reply_is_the_recipients_first_message_and_only_that() -> None:
    core = PartitionCore(window_size=60, lateness=30)
    windows, touched = run(core, [
        sent(T0 + 1, "a", "b", True),
        sent(T0 + 5, "a", "b", False),  # a follow-up from the starter: not a reply
        sent(T0 + 61.5, "b", "a", False),  # the first reply, 60.5 s later
        sent(T0 + 70, "b", "a", False),  # a second reply: not a first reply
    ])
    assert touched == {"c-1"}
    assert windows[T0][("started", "web", "inmail", "search")] == 1
    assert ("first_reply", "inmail") not in windows[T0]
    later = windows[T0 + 60]
    assert later[("first_reply", "inmail")] == 1
    assert later[("latency_sum_ms", "inmail")] == 60_500
    assert later[("latency_bucket", "inmail", "1")] == 1  # (60 s, 300 s]
    assert later[("sent", "web", "inmail", "recruiter", "text")] == 2
    assert core.conversation("c-1").replied


def test_distinct_senders_per_window() -> None:
    core = PartitionCore(window_size=60, lateness=30)
    batch = BatchWindows()
    for event in [sent(T0 + 1, "a", "b", True), sent(T0 + 2, "a", "b", False),
                  sent(T0 + 3, "b", "a", False), sent(T0 + 61, "c", "d", True, cid="c-2")]:
        core.add(event, batch)
    assert batch.senders == {T0: {"a", "b"}, T0 + 60: {"c"}}


def test_reply_to_an_unknown_conversation_is_a_message_not_a_reply() -> None:
    core = PartitionCore(window_size=60, lateness=30)
    windows, _ = run(core, [sent(T0 + 1, "b", "a", False)])
    assert ("first_reply", "inmail") not in windows[T0]


def test_spam_report_takes_the_conversations_channel() -> None:
    core = PartitionCore(window_size=60, lateness=30)
    report = SpamReported(
        event_id="e-r", ts=T0 + 3, conversation_id="c-1", schema_version=1,
        message_id="msg-r", reporter_id="b", reported_id="a", reason="scam", platform="ios",
    )
    orphan = msgspec.structs.replace(report, conversation_id="c-9", event_id="e-o")
    windows, _ = run(core, [sent(T0 + 1, "a", "b", True, channel="sponsored"), report, orphan])
    assert windows[T0][("spam", "sponsored", "scam")] == 1
    assert windows[T0][("spam", "unknown", "scam")] == 1


def test_late_events_update_state_but_are_not_counted() -> None:
    core = PartitionCore(window_size=60, lateness=10)
    batch = BatchWindows()
    assert core.add(sent(T0 + 100, "x", "y", True, cid="c-2"), batch)
    # T0+1 is in [T0, T0+60), which closed when the watermark reached T0+90
    assert not core.add(sent(T0 + 1, "a", "b", True), batch)
    assert T0 not in batch.counts and T0 not in batch.senders
    assert core.conversation("c-1") is not None


def test_conversation_state_round_trips() -> None:
    conversation = Conversation(T0, "a", "b", "connection", "member", True)
    assert Conversation.loads(conversation.dumps()) == conversation


def test_duplicate_event_ids_are_rejected_within_the_horizon_only() -> None:
    core = PartitionCore(window_size=60, lateness=30, dedup_horizon=600)
    batch = BatchWindows()
    first = sent(T0 + 1, "a", "b", True)
    assert core.admit(first) is None
    core.add(first, batch)
    assert core.admit(first) == "duplicate_event_id"
    core.add(sent(T0 + 700, "x", "y", True, cid="c-2"), batch)  # 699 s later
    assert core.admit(first) is None  # forgotten: past the horizon
    again = msgspec.structs.replace(first, ts=T0 + 700)  # the same id, within the horizon
    assert core.admit(again) is None  # its earlier copy is past the horizon
    assert core.admit(again) == "duplicate_event_id"  # this one is remembered


def test_timestamps_far_ahead_of_the_partition_are_rejected() -> None:
    core = PartitionCore(window_size=60, lateness=30, max_ahead=3600)
    core.add(sent(T0, "a", "b", True), BatchWindows())
    assert core.admit(sent(T0 + 3600, "a", "b", False)) is None
    assert core.admit(sent(T0 + 3601, "a", "b", False)) == "timestamp_too_far_ahead"


@pytest.mark.parametrize(("channel", "ttl"), [("connection", 3600), ("inmail", 7200)])
def test_conversations_expire_after_their_ttl_and_replies_then_do_not_count(
    channel: str, ttl: int
) -> None:
    """InMail conversations are remembered for the InMail response horizon instead."""
    core = PartitionCore(window_size=60, lateness=30, conversation_ttl=3600, inmail_horizon=7200)
    batch = BatchWindows()
    core.add(sent(T0, "a", "b", True, channel=channel), batch)
    core.add(sent(T0 + ttl - 1800, "x", "y", True, channel=channel, cid="c-2"), batch)
    core.add(sent(T0 + ttl + 1, "b", "a", False, channel=channel), batch)  # c-1: past its TTL
    assert all(("first_reply", channel) not in counts for counts in batch.counts.values())
    dropped = core.expire()
    assert dropped == ["c-1"] and core.conversation("c-2") is not None
    assert core.conversation("c-1") is None