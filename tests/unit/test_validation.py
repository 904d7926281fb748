"""The validator: a precise reason for every rejection, and acceptance of the contract."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from streams.events import REJECTION_REASONS, decode, validate

SENT: dict[str, Any] = {
    "event_id": "e-1", "type": "message_sent", "ts": 1_790_000_000.5,
    "conversation_id": "c-1", "schema_version": 1, "message_id": "msg-1",
    "sender_id": "m-1", "recipient_id": "m-2", "sender_type": "recruiter",
    "channel": "inmail", "content_type": "text", "platform": "ios",
    "entry_point": "job_listing", "first_in_conversation": True,
}
READ = {"event_id": "e-2", "type": "message_read", "ts": 1_790_000_001, "conversation_id": "c-1",
        "schema_version": 1, "message_id": "msg-1", "reader_id": "m-2", "platform": "web"}
SPAM = {"event_id": "e-3", "type": "spam_reported", "ts": 1_790_000_002.0,
        "conversation_id": "c-1", "schema_version": 1, "message_id": "msg-1",
        "reporter_id": "m-2", "reported_id": "m-1", "reason": "scam", "platform": "android"}
BLOCK = {"event_id": "e-4", "type": "member_blocked", "ts": 1_790_000_003.0,
         "conversation_id": "c-1", "schema_version": 1, "blocker_id": "m-2",
         "blocked_id": "m-1", "platform": "web"}


def without(event: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != field}


@pytest.mark.parametrize("event", [SENT, READ, SPAM, BLOCK], ids=lambda e: e["type"])
def test_contract_events_are_valid(event: dict[str, Any]) -> None:
    assert validate(event) is None


CASES = [
    ("not_an_object", [1, 2], "list"),
    ("not_an_object", "text", "str"),
    ("missing_field", without(SENT, "type"), "type"),
    ("wrong_type", {**SENT, "type": 3}, "type"),
    ("unknown_type", {**SENT, "type": "message_deleted"}, "message_deleted"),
    ("missing_field", without(SENT, "schema_version"), "schema_version"),
    ("wrong_type", {**SENT, "schema_version": "1"}, "schema_version"),
    ("wrong_type", {**SENT, "schema_version": True}, "schema_version"),
    ("unsupported_schema_version", {**SENT, "schema_version": 3}, "3"),
    ("missing_field", without(SENT, "ts"), "ts"),
    ("wrong_type", {**SENT, "ts": "2026-01-01"}, "ts"),
    ("wrong_type", {**SENT, "ts": True}, "ts"),
    ("invalid_timestamp", {**SENT, "ts": 12.0}, "ts"),
    ("invalid_timestamp", {**SENT, "ts": 1e12}, "ts"),
    ("invalid_timestamp", {**SENT, "ts": float("nan")}, "ts"),
    ("missing_field", without(SENT, "sender_id"), "sender_id"),
    ("missing_field", {**SENT, "conversation_id": ""}, "conversation_id"),
    ("wrong_type", {**SENT, "recipient_id": 7}, "recipient_id"),
    ("wrong_type", {**SENT, "first_in_conversation": "yes"}, "first_in_conversation"),
    ("wrong_type", {**SENT, "first_in_conversation": 1}, "first_in_conversation"),
    ("wrong_type", {**SENT, "channel": 5}, "channel"),
    ("invalid_enum", {**SENT, "channel": "fax"}, "channel"),
    ("invalid_enum", {**SENT, "sender_type": "bot"}, "sender_type"),
    ("invalid_enum", {**SENT, "content_type": "video"}, "content_type"),
    ("invalid_enum", {**SENT, "platform": "blackberry"}, "platform"),
    ("invalid_enum", {**SENT, "entry_point": "email"}, "entry_point"),
    ("invalid_enum", {**SPAM, "reason": "boring"}, "reason"),
    ("missing_field", without(READ, "reader_id"), "reader_id"),
    ("missing_field", without(BLOCK, "blocked_id"), "blocked_id"),
    ("invalid_enum", {**BLOCK, "platform": "WEB"}, "platform"),
]


@pytest.mark.parametrize(("reason", "event", "detail"), CASES)
def test_every_rejection_has_its_reason(reason: str, event: Any, detail: str) -> None:
    rejection = validate(event)
    assert rejection is not None
    assert (rejection.reason, rejection.detail) == (reason, detail)


def test_every_reason_is_exercised() -> None:
    covered = {reason for reason, _, _ in CASES} | {"too_large", "malformed_json"}
    # the two reasons that need partition state are covered in test_ingest_core
    covered |= {"duplicate_event_id", "timestamp_too_far_ahead"}
    assert covered == set(REJECTION_REASONS)


def test_decode_rejects_oversize_and_malformed() -> None:
    assert decode(b"x" * 101, 100)[1].reason == "too_large"  # type: ignore[union-attr]
    assert decode(b"{bad", 100)[1].reason == "malformed_json"  # type: ignore[union-attr]
    assert decode(None, 100)[1].reason == "malformed_json"  # type: ignore[union-attr]
    event, rejection = decode(orjson.dumps(READ), 1000)
    assert rejection is None and event == READ
