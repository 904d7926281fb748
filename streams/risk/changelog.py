"""The risk stage's state changelog (``messaging.risk.state``): its records.

One sender-activity partition's state goes to the changelog partition of the same
number, in the transaction of the batch that changed it, as what the batch changed
rather than the whole state:

- ``\\x00header``: the watermark, the recent windows' tallies, the late events and the
  input offset the state has applied up to; small, every batch replaces it.
- ``\\x00h:<recruiter id>``: one record per recruiter, its whole InMail history
  (``[[bucket, sent, responses], ...]``: at most a horizon's buckets, small), written by
  the batch that changed it (at a window close) and tombstoned by the batch that forgot
  it (its newest bucket past the horizon). Kafka's compaction keeps the latest value per
  recruiter: the changelog holds one record per recruiter remembered, however often
  each was written.
- ``\\x00window:<start>:<offset>:<n>``: what the batch added to an open window (its
  senders' counts, recruiters' InMail responses), tombstoned when the window closes;
  split below ``RECORD_BYTES`` (:mod:`streams.store.records`) and keyed by the batch's
  last input offset and the chunk's number.

A restore reads them in changelog order (a recruiter's latest value wins, a tombstone
forgets it; a window's increments add up).

Earlier versions wrote the whole state as one record, ``snapshot``, for every batch;
the latest one is still read back (an upgrade), and tombstoned by the first batch
after it, which writes the whole state in these records.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from streams.risk.inmail import Buckets, decode_buckets, dump_buckets
from streams.store.records import chunks, record_key

HEADER_KEY = b"\x00header"
HISTORY_PREFIX = b"\x00h:"
WINDOW_PREFIX = b"\x00window:"
SNAPSHOT_KEY = b"snapshot"  # earlier versions' whole state

# bounds on a window record item's JSON besides the sender's id: per count or response
# bucket, and the rest (``"id":[...]`` punctuation)
_ITEM_CHARS, _REST_CHARS = 24, 16
_COUNTS = 3  # a sender's counts: messages sent, spam reports received, InMails sent
# encoded by msgspec, sized exactly (orjson's small results keep a 4 KiB buffer each)
_ENCODER = msgspec.json.Encoder()


def history_key(sender: str) -> bytes:
    return HISTORY_PREFIX + sender.encode()


def history_sender(key: bytes) -> str:
    return key[len(HISTORY_PREFIX):].decode()


def history_value(value: Buckets) -> bytes:
    return dump_buckets(value)


def decode_history(value: bytes) -> Buckets:
    return decode_buckets(orjson.loads(value))


def window_records(
    start: int, activity: dict[str, list[int]] | None,
    responses: dict[str, dict[int, int]] | None, last_offset: int,
) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` for what a batch added to the open window ``start``: senders'
    counts (``activity``) and recruiters' responses by send bucket (``responses``),
    either None if the batch added none. An empty one is written too: an open window
    with no senders still closes (and is tallied)."""
    items: list[tuple[str, str, Any]] = [("a", s, c) for s, c in (activity or {}).items()]
    items += [("r", s, {str(b): n for b, n in buckets.items()})
              for s, buckets in (responses or {}).items()]
    sizes = [len(sender) + _ITEM_CHARS * (len(value) if kind == "r" else _COUNTS) + _REST_CHARS
             for kind, sender, value in items]
    out = []
    prefix = WINDOW_PREFIX + b"%d:" % start
    for n, chunk in enumerate(chunks(items, sizes) or [[]]):
        body: dict[str, dict[str, Any]] = {}
        if activity is not None and n == 0:
            body["activity"] = {}
        if responses is not None and n == 0:
            body["responses"] = {}
        for kind, sender, value in chunk:
            body.setdefault("activity" if kind == "a" else "responses", {})[sender] = value
        out.append((record_key(prefix, last_offset, n), _ENCODER.encode(body)))
    return out


def window_of(key: bytes) -> int:
    """The window start of a window record's key."""
    return int(key[len(WINDOW_PREFIX):].split(b":", 1)[0])


def decode_window(value: bytes) -> dict[str, dict[str, Any]]:
    """``{"activity": {sender: counts}, "responses": {sender: {bucket: n}}}``, either
    key present only if the batch added to it."""
    return orjson.loads(value)
