"""The ingest's state changelog (``messaging.ingest.state``): its records and their lives.

One input partition's state goes to the changelog partition of the same number, in the
transaction of the batch that changed it, as a few records per batch rather than one
per conversation (which was 0.5 records per event, nearly all the records we wrote):

- ``\\x00clock``: the partition clock; every batch replaces it.
- ``\\x00ids:<offset>:<n>``: the event ids the batch accepted, with their event time.
- ``\\x00conversations:<offset>:<n>`` and ``\\x00inmail:<offset>:<n>``: the
  conversations the batch started or changed, whole. InMail conversations are
  remembered for the 30-day InMail horizon, the others for the conversation TTL: in one
  record the others would live as long.

A batch's ids and conversations are split into records of about ``RECORD_BYTES`` at most
(so below the broker's default ``max.message.bytes``, 1 MiB, whatever the ids hold),
keyed by the batch's last input offset and the chunk's number. A restore reads them in
changelog order, so each conversation ends with its latest value, and then drops what
is past its horizon, as the live stage did batch by batch. A record is tombstoned once
everything in it is past its horizon (:class:`RecordLives`), which keeps the compacted
changelog bounded: the newest event id's ts plus the dedup horizon; the latest start
plus the TTL.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import TypeVar

import msgspec
import orjson

from streams.ingest.conversation_table import Conversation
from streams.store.partition_store import PartitionStore

CLOCK_KEY = b"\x00clock"
IDS_PREFIX = b"\x00ids:"
CONVERSATIONS_PREFIX = b"\x00conversations:"
INMAIL_PREFIX = b"\x00inmail:"

# counted in characters: even if every one took JSON's longest escape (6 bytes) a
# record would stay below 1 MiB
RECORD_BYTES = 128 * 1024

Changed = list[tuple[str, Conversation]]
Item = TypeVar("Item")

_ENCODER = msgspec.json.Encoder()
_CONVERSATIONS = msgspec.json.Decoder(Changed)
_EXPIRY = struct.Struct(">d")  # big-endian float: index entries sort by time (ts >= 0)
_LIVES = b"x"  # the store's index of live records by expiry time
_LIFE = b"\x00life:"  # + a record's key: its expiry time, in the store


def conversation_records(
    changed: Changed, last_offset: int, ttl: float, inmail_ttl: float, now: float
) -> list[tuple[bytes, bytes, float]]:
    """``(key, value, expires)`` for a batch's changed conversations. A record all of
    whose conversations are already past their TTL (a batch can span more than it) is
    not written: nothing would read it."""
    common = [item for item in changed if item[1].channel != "inmail"]
    inmail = [item for item in changed if item[1].channel == "inmail"]
    out = []
    for prefix, group in ((CONVERSATIONS_PREFIX, common), (INMAIL_PREFIX, inmail)):
        # a bound on each one's JSON: its strings' characters and the rest (< 96)
        sizes = [len(cid) + len(c.starter_id) + len(c.recipient_id) + 96 for cid, c in group]
        for n, chunk in enumerate(_chunks(group, sizes)):
            expires = conversations_expiry(chunk, ttl, inmail_ttl)
            if expires >= now:
                out.append((_key(prefix, last_offset, n), _ENCODER.encode(chunk), expires))
    return out


def id_records(
    accepted: list[tuple[str, float]], last_offset: int, horizon: float, now: float
) -> list[tuple[bytes, bytes, float]]:
    """``(key, value, expires)`` for the event ids a batch accepted, with their ts; as
    :func:`conversation_records`, none all of whose ids are forgotten already."""
    out = []
    sizes = [len(event_id) + 32 for event_id, _ in accepted]
    for n, chunk in enumerate(_chunks(accepted, sizes)):
        expires = ids_expiry(chunk, horizon)
        if expires >= now:
            out.append((_key(IDS_PREFIX, last_offset, n), orjson.dumps(chunk), expires))
    return out


def is_conversations(key: bytes) -> bool:
    return key.startswith((CONVERSATIONS_PREFIX, INMAIL_PREFIX))


def decode_conversations(value: bytes) -> Changed:
    return _CONVERSATIONS.decode(value)


def conversations_expiry(changed: Changed, ttl: float, inmail_ttl: float) -> float:
    """When the last of these conversations is past its TTL (InMail ones: the longer)."""
    return max(conversation.started_at + (inmail_ttl if conversation.channel == "inmail"
                                          else ttl) for _, conversation in changed)


def ids_expiry(accepted: list[tuple[str, float]], horizon: float) -> float:
    """When the newest of these event ids is past the dedup horizon."""
    return max([ts for _, ts in accepted]) + horizon


def _key(prefix: bytes, last_offset: int, n: int) -> bytes:
    return prefix + b"%d:%d" % (last_offset, n)


def _chunks(items: list[Item], sizes: list[int]) -> list[list[Item]]:
    """``items`` in consecutive runs of at most ``RECORD_BYTES`` by ``sizes`` (halved
    until each fits: the sums run in C, where a greedy cut would loop in Python)."""
    if not items:
        return []
    if sum(sizes) <= RECORD_BYTES or len(items) == 1:
        return [items]
    half = len(items) // 2
    return _chunks(items[:half], sizes[:half]) + _chunks(items[half:], sizes[half:])


class RecordLives:
    """When each live changelog record may be tombstoned, kept in the partition's store
    (an index entry per record by expiry time, and the record's expiry by its key) so
    that a week of batches' records costs no memory and survives a restart with the
    store.

    A key written again (input offsets start over when the events topic is recreated,
    and keys are made of them) replaces the record in the compacted changelog: the older
    entry's expiry no longer matches the key's, so it is dropped without a tombstone,
    which would take the newer record with it."""

    def __init__(self, store: PartitionStore) -> None:
        self.store = store
        self._walked_below = b""  # every entry below this was walked already

    def track(self, key: bytes, expires: float) -> None:
        when = _EXPIRY.pack(max(0.0, expires))
        self.store.stage(_LIFE + key, when, (_LIVES + when + key, True))
        # records are written only while not expired (>= now), so this lowers nothing in
        # the stage; it keeps the walk right for any caller that tracks a due record
        self._walked_below = min(self._walked_below, when)

    def expired(self, now: float) -> Iterator[bytes]:
        """The keys of records past their expiry, each forgotten by the store as it is
        yielded (a batch of event ids' copy too): the caller tombstones it in the
        changelog.

        Entries staged in the batch in flight are not seen until it is committed. A
        record tombstoned while its entries stayed (a crash between the Kafka commit
        and the store's) is yielded again: a second tombstone is harmless."""
        if now < 0:
            return
        store = self.store
        bound = _LIVES + _EXPIRY.pack(now)
        for entry in store.index(_LIVES, self._walked_below):
            if entry >= bound:
                break
            when = entry[len(_LIVES):len(_LIVES) + _EXPIRY.size]
            key = entry[len(_LIVES) + _EXPIRY.size:]
            store.stage_index(entry, False)
            if store.get(_LIFE + key) != when:
                continue  # the key was written again since, to live longer
            store.stage(_LIFE + key, None)
            if key.startswith(IDS_PREFIX):
                store.stage(key, None)
            yield key
        self._walked_below = _EXPIRY.pack(now)
