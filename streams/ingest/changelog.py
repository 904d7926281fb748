"""The ingest's state changelog (``messaging.ingest.state``): its records and their lives.

One input partition's state goes to the changelog partition of the same number, in the
transaction of the batch that changed it, as a few records per batch rather than one
per conversation (which was 0.5 records per event, nearly all the records we wrote):

- ``\\x00clock``: the partition clock, and the input offset the state has applied up to
  (where a restored stage resumes its input); every batch replaces it.
- ``\\x00ids:<offset>:<n>``: the event ids the batch accepted, with their event time.
- ``\\x00conversations:<offset>:<n>`` and ``\\x00inmail:<offset>:<n>``: the
  conversations the batch started or changed, whole. InMail conversations are
  remembered for the 30-day InMail horizon, the others for the conversation TTL: in one
  record the others would live as long.

A batch's ids and conversations are split into records of about ``RECORD_BYTES`` at
most (:mod:`streams.store.records`: below the broker's default ``max.message.bytes``,
1 MiB, whatever the ids hold), keyed by the batch's last input offset and the chunk's number. A restore reads them in
changelog order, so each conversation ends with its latest value, and then drops what
is past its horizon, as the live stage did batch by batch. A record is tombstoned once
everything in it is past its horizon (:class:`RecordLives`), which keeps the compacted
changelog bounded: the newest event id's ts plus the dedup horizon; the latest start
plus the TTL.
"""

from __future__ import annotations

import math

import msgspec
import orjson

from streams.ingest.conversation_table import Conversation, Touched
from streams.store import records
from streams.store.partition_store import PartitionStore
from streams.store.records import RECORD_BYTES, record_key

CLOCK_KEY = b"\x00clock"
IDS_PREFIX = b"\x00ids:"
CONVERSATIONS_PREFIX = b"\x00conversations:"
INMAIL_PREFIX = b"\x00inmail:"

Changed = list[tuple[str, Conversation]]

_ENCODER = msgspec.json.Encoder()
_CONVERSATIONS = msgspec.json.Decoder(Changed)


def conversation_records(
    changed: dict[str, Touched], last_offset: int, ttl: float, inmail_ttl: float, now: float
) -> list[tuple[bytes, bytes, float]]:
    """``(key, value, expires)`` for a batch's changed conversations (their JSON, as the
    store got it, is embedded, not encoded again). A record all of whose conversations
    are already past their TTL (a batch can span more than it) is not written: nothing
    would read it.

    One pass per lifetime, cutting records as it goes: about a conversation per two
    events changes, and passes over them (split, sizes, expiry, encoding) were a tenth
    of the ingest's CPU."""
    common: list[tuple[str, Touched]] = []
    inmail: list[tuple[str, Touched]] = []
    for item in changed.items():
        (inmail if item[1][2] else common).append(item)
    out: list[tuple[bytes, bytes, float]] = []
    for prefix, lifetime, group in (
        (CONVERSATIONS_PREFIX, ttl, common), (INMAIL_PREFIX, inmail_ttl, inmail),
    ):
        chunk: list[tuple[str, msgspec.Raw]] = []
        n, size, newest = 0, 0, -math.inf
        for conversation_id, (raw, started_at, _) in group:
            # characters, as RECORD_BYTES counts them (the id's, escaped, are at most 6x)
            item_size = len(conversation_id) + len(raw) + 8
            if chunk and size + item_size > RECORD_BYTES:
                _add_chunk(out, record_key(prefix, last_offset, n), chunk, newest + lifetime, now)
                chunk, n, size, newest = [], n + 1, 0, -math.inf
            chunk.append((conversation_id, msgspec.Raw(raw)))
            size += item_size
            if started_at > newest:  # noqa: PLR1730 (max() costs more, per item)
                newest = started_at
        if chunk:
            _add_chunk(out, record_key(prefix, last_offset, n), chunk, newest + lifetime, now)
    return out


def _add_chunk(
    out: list[tuple[bytes, bytes, float]], key: bytes, chunk: list[tuple[str, msgspec.Raw]],
    expires: float, now: float,
) -> None:
    if expires >= now:
        out.append((key, _ENCODER.encode(chunk), expires))


def ids_record_holds(record: bytes, event_id: str, oldest: float) -> bool:
    """Whether a record of a batch's event ids (``[["<id>",<ts>],...]``, written by
    ``EventIds.finish_batch`` in ``native/src/lib.rs``) holds
    ``event_id`` with ts ``oldest`` or later. Searched in its bytes, not decoded: a
    record holds thousands of ids, and a burst of redelivered events (a producer's retried
    batch) confirms one match each. ``["`` only starts an element (inside a JSON string a
    quote is escaped), so a match is the id's whole string; the same id can be in one
    record twice (accepted again past the horizon within a batch)."""
    needle = b"[" + orjson.dumps(event_id) + b","
    at = record.find(needle)
    while at >= 0:
        start = at + len(needle)
        end = record.index(b"]", start)
        if float(record[start:end]) >= oldest:
            return True
        at = record.find(needle, end)
    return False


def is_conversations(key: bytes) -> bool:
    return key.startswith((CONVERSATIONS_PREFIX, INMAIL_PREFIX))


def decode_conversations(value: bytes) -> Changed:
    return _CONVERSATIONS.decode(value)


def conversations_expiry(changed: Changed, ttl: float, inmail_ttl: float) -> float:
    """When the last of these conversations is past its TTL (InMail ones: the longer)."""
    return max(conversation.started_at + (inmail_ttl if conversation.channel == "inmail"
                                          else ttl) for _, conversation in changed)


def ids_newest(accepted: list[tuple[str, float]]) -> float:
    """The newest ts of these event ids."""
    return max([ts for _, ts in accepted])


def ids_expiry(accepted: list[tuple[str, float]], horizon: float) -> float:
    """When the newest of these event ids is past the dedup horizon."""
    return ids_newest(accepted) + horizon


class RecordLives(records.RecordLives):
    """The lives of the ingest's records; a batch of event ids is also kept in the
    store (read back into memory on restore), and forgotten there with its life."""

    def __init__(self, store: PartitionStore) -> None:
        super().__init__(store, kept=(IDS_PREFIX,))
