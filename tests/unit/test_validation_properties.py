"""Property-based tests of the validator: it never raises, and it agrees with the contract."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import (
    CHANNELS,
    CONTENT_TYPES,
    ENTRY_POINTS,
    MAX_TS,
    MIN_TS,
    PLATFORMS,
    REJECTION_REASONS,
    SENDER_TYPES,
    parse,
    validate,
)

ids = st.text(min_size=1, max_size=12)
ts = st.floats(min_value=MIN_TS, max_value=MAX_TS, exclude_max=True)
message_sent = st.fixed_dictionaries({
    "event_id": ids, "type": st.just("message_sent"), "ts": ts, "conversation_id": ids,
    "schema_version": st.just(1), "message_id": ids, "sender_id": ids, "recipient_id": ids,
    "sender_type": st.sampled_from(SENDER_TYPES), "channel": st.sampled_from(CHANNELS),
    "content_type": st.sampled_from(CONTENT_TYPES), "platform": st.sampled_from(PLATFORMS),
    "entry_point": st.sampled_from(ENTRY_POINTS), "first_in_conversation": st.booleans(),
})
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


@given(message_sent)
def test_every_contract_event_is_valid(event: dict[str, Any]) -> None:
    assert validate(event) is None
    decoded, rejection = parse(orjson.dumps(event), 4096)
    assert rejection is None and msgspec.to_builtins(decoded) == event


def test_a_repeated_key_is_refused_not_guessed_at() -> None:
    event = {"event_id": "e-1", "type": "message_read", "ts": MIN_TS, "conversation_id": "c",
             "schema_version": 1, "message_id": "m", "reader_id": "r", "platform": "web"}
    raw = b'{"platform":"tv",' + orjson.dumps(event)[1:]  # orjson keeps the last "platform"
    assert validate(orjson.loads(raw)) is None
    decoded, rejection = parse(raw, 4096)
    assert decoded is None and rejection is not None
    assert rejection.reason == "malformed_json" and "platform" in rejection.detail


@given(message_sent, st.sampled_from(sorted(
    ["event_id", "type", "ts", "conversation_id", "schema_version", "sender_type", "channel",
     "content_type", "platform", "entry_point", "first_in_conversation", "sender_id"])),
    json_values)
@settings(max_examples=300)
def test_changing_any_field_is_either_valid_or_rejected_with_a_known_reason(
    event: dict[str, Any], field: str, value: Any
) -> None:
    mutated = {**event, field: value}
    rejection = validate(mutated)
    decoded, parse_rejection = parse(orjson.dumps(mutated), 4096)
    assert parse_rejection == rejection  # the C decoder and the explanation agree
    assert (decoded is None) == (rejection is not None)
    if rejection is not None:
        assert rejection.reason in REJECTION_REASONS
        # the reason names the field, or the event as a whole
        assert rejection.detail in (field, str(value)[:64], str(value)[:16]) or field == "type"


@given(st.binary(max_size=200) | json_values.map(orjson.dumps))
@settings(max_examples=300)
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    event, rejection = parse(raw, 4096)
    if rejection is None:
        assert validate(orjson.loads(raw)) is None
        # what the worker reads is what was sent (fields outside the contract aside)
        assert msgspec.to_builtins(event).items() <= orjson.loads(raw).items()
    else:
        assert rejection.reason in REJECTION_REASONS
