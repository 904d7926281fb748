"""The event contract (DESIGN.md) as typed records, and a pure validator.

The ingest hot path works on plain dicts decoded by orjson; the TypedDicts document
and type them. :func:`validate` returns ``None`` for a good event or a
:class:`Rejection` whose ``reason`` is a small fixed enumeration (a Prometheus label)
and whose ``detail`` names the field (DLQ header only, never a label).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Literal, TypedDict

import orjson

SCHEMA_VERSION: Final = 1

SENDER_TYPES: Final = ("member", "premium", "recruiter", "advertiser")
CHANNELS: Final = ("connection", "inmail", "sponsored")
CONTENT_TYPES: Final = ("text", "attachment", "rich_media")
PLATFORMS: Final = ("web", "ios", "android")
ENTRY_POINTS: Final = ("inbox", "profile", "job_listing", "search")
SPAM_REASONS: Final = ("spam", "scam", "harassment", "other")
EVENT_TYPES: Final = ("message_sent", "message_read", "spam_reported", "member_blocked")

# Event time must be a plausible UTC epoch: 2000-01-01 .. 2100-01-01.
MIN_TS: Final = 946_684_800.0
MAX_TS: Final = 4_102_444_800.0

REJECTION_REASONS: Final = (
    "too_large",
    "malformed_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "unknown_type",
    "invalid_enum",
    "invalid_timestamp",
    "unsupported_schema_version",
    # need the partition's state (see PartitionCore.admit)
    "duplicate_event_id",
    "timestamp_too_far_ahead",
)


class BaseEvent(TypedDict):
    event_id: str
    type: str
    ts: float
    conversation_id: str
    schema_version: int


class MessageSent(BaseEvent):
    message_id: str
    sender_id: str
    recipient_id: str
    sender_type: Literal["member", "premium", "recruiter", "advertiser"]
    channel: Literal["connection", "inmail", "sponsored"]
    content_type: Literal["text", "attachment", "rich_media"]
    platform: Literal["web", "ios", "android"]
    entry_point: Literal["inbox", "profile", "job_listing", "search"]
    first_in_conversation: bool


class MessageRead(BaseEvent):
    message_id: str
    reader_id: str
    platform: Literal["web", "ios", "android"]


class SpamReported(BaseEvent):
    message_id: str
    reporter_id: str
    reported_id: str
    reason: Literal["spam", "scam", "harassment", "other"]
    platform: Literal["web", "ios", "android"]


class MemberBlocked(BaseEvent):
    blocker_id: str
    blocked_id: str
    platform: Literal["web", "ios", "android"]


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str  # one of REJECTION_REASONS
    detail: str


# field -> expected kind: "str", "bool", or a tuple of allowed values (an enum of str)
_Spec = dict[str, Any]
_COMMON: Final[_Spec] = {"event_id": "str", "conversation_id": "str"}
_FIELDS: Final[dict[str, _Spec]] = {
    "message_sent": {
        **_COMMON,
        "message_id": "str",
        "sender_id": "str",
        "recipient_id": "str",
        "sender_type": SENDER_TYPES,
        "channel": CHANNELS,
        "content_type": CONTENT_TYPES,
        "platform": PLATFORMS,
        "entry_point": ENTRY_POINTS,
        "first_in_conversation": "bool",
    },
    "message_read": {**_COMMON, "message_id": "str", "reader_id": "str", "platform": PLATFORMS},
    "spam_reported": {
        **_COMMON,
        "message_id": "str",
        "reporter_id": "str",
        "reported_id": "str",
        "reason": SPAM_REASONS,
        "platform": PLATFORMS,
    },
    "member_blocked": {**_COMMON, "blocker_id": "str", "blocked_id": "str", "platform": PLATFORMS},
}


# The hot path: per type, (text fields, bool fields, (enum field, allowed values)).
_FAST: Final = {
    event_type: (
        tuple(n for n, k in spec.items() if k == "str"),
        tuple(n for n, k in spec.items() if k == "bool"),
        tuple((n, frozenset(k)) for n, k in spec.items() if isinstance(k, tuple)),
    )
    for event_type, spec in _FIELDS.items()
}


def validate(event: Any) -> Rejection | None:
    """Check one decoded event against the contract; ``None`` means valid.

    Valid events take a fast path of plain type and membership checks; only a
    rejected event is walked field by field to say precisely what is wrong.
    """
    if type(event) is dict:
        event_type = event.get("type")
        fast = _FAST.get(event_type) if type(event_type) is str else None
        if fast is not None and _conforms(event, *fast):
            return None
    return _explain(event)


def _conforms(
    event: dict[str, Any],
    texts: tuple[str, ...],
    flags: tuple[str, ...],
    enums: tuple[tuple[str, frozenset[str]], ...],
) -> bool:
    get = event.get
    version = get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        return False
    ts = get("ts")
    if (type(ts) is not float and type(ts) is not int) or not MIN_TS <= ts < MAX_TS:
        return False  # (NaN fails the comparison too)
    for name in texts:
        value = get(name)
        if type(value) is not str or not value:
            return False
    for name in flags:
        if type(get(name)) is not bool:
            return False
    for name, allowed in enums:
        value = get(name)
        if type(value) is not str or value not in allowed:
            return False
    return True


def _explain(event: Any) -> Rejection | None:
    """The precise reason an event is rejected (None if it is in fact valid)."""
    if not isinstance(event, dict):
        return Rejection("not_an_object", type(event).__name__)
    event_type = event.get("type")
    if event_type is None:
        return Rejection("missing_field", "type")
    if not isinstance(event_type, str):
        return Rejection("wrong_type", "type")
    spec = _FIELDS.get(event_type)
    if spec is None:
        return Rejection("unknown_type", event_type[:64])
    version = event.get("schema_version")
    if version is None:
        return Rejection("missing_field", "schema_version")
    if type(version) is not int:
        return Rejection("wrong_type", "schema_version")
    if version != SCHEMA_VERSION:
        return Rejection("unsupported_schema_version", str(version)[:16])
    ts = event.get("ts")
    if ts is None:
        return Rejection("missing_field", "ts")
    if type(ts) not in (int, float):
        return Rejection("wrong_type", "ts")
    if not (MIN_TS <= ts < MAX_TS) or math.isnan(ts):
        return Rejection("invalid_timestamp", "ts")
    for name, kind in spec.items():
        value = event.get(name)
        if value is None:
            return Rejection("missing_field", name)
        if kind == "bool":
            if type(value) is not bool:
                return Rejection("wrong_type", name)
        elif type(value) is not str:
            return Rejection("wrong_type", name)
        elif kind == "str":
            if not value:
                return Rejection("missing_field", name)
        elif value not in kind:
            return Rejection("invalid_enum", name)
    return None


def decode(raw: bytes | None, max_bytes: int) -> tuple[Any, Rejection | None]:
    """Decode one Kafka message value; reject oversize or malformed JSON."""
    if raw is None:
        return None, Rejection("malformed_json", "empty value")
    if len(raw) > max_bytes:
        return None, Rejection("too_large", f"{len(raw)} bytes")
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError as exc:
        return None, Rejection("malformed_json", str(exc)[:200])


def parse(raw: bytes | None, max_bytes: int) -> tuple[Any, Rejection | None]:
    """Decode and validate one message value: the event, or why it is rejected."""
    event, rejection = decode(raw, max_bytes)
    if rejection is None:
        rejection = validate(event)
    return event, rejection
