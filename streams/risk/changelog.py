"""The risk stage's state changelog (``messaging.risk.state``): its records.

One sender-activity partition's state goes to the changelog partition of the same
number, in the transaction of the batch that changed it, as what the batch changed
rather than the whole state:

- ``\\x00header``: the watermark, the recent windows' tallies and the late events;
  small, every batch replaces it.
- ``\\x00inmail:<offset>:<n>``: the recruiters whose InMail history the batch changed
  (at a window close), whole values. A record is tombstoned once every recruiter in it
  is past the horizon (:class:`~streams.store.records.RecordLives`, by the horizon of
  the last window closed).
- ``\\x00window:<start>:<offset>:<n>``: what the batch added to an open window (its
  senders' counts, recruiters' InMail responses), tombstoned when the window closes.

Records are split below ``RECORD_BYTES`` (:mod:`streams.store.records`) and keyed by
the batch's last input offset and the chunk's number. A restore reads them in changelog
order (each recruiter ends with its latest value; a window's increments add up), then
forgets the recruiters past the horizon, as the live stage did at each close.

Earlier versions wrote the whole state as one record, ``snapshot``, for every batch;
it is still read back (an upgrade), and tombstoned by the first batch after it, which
writes the whole state in these records.
"""

from __future__ import annotations

from typing import Any

import orjson

from streams.risk.inmail import Buckets, decode_buckets, encode_buckets
from streams.store.records import chunks, record_key

HEADER_KEY = b"\x00header"
INMAIL_PREFIX = b"\x00inmail:"
WINDOW_PREFIX = b"\x00window:"
SNAPSHOT_KEY = b"snapshot"  # earlier versions' whole state

# a bound on the JSON of a recruiter's history besides its id: per bucket and the rest
_BUCKET_CHARS, _REST_CHARS = 64, 16


def history_records(
    changed: list[tuple[str, Buckets]], last_offset: int, bucket_size: int
) -> list[tuple[bytes, bytes, int]]:
    """``(key, value, expires)`` for the recruiters a batch changed: ``expires`` is the
    horizon at which the last of them is forgotten (their newest bucket's end)."""
    sizes = [len(sender) + _BUCKET_CHARS * len(value) + _REST_CHARS for sender, value in changed]
    out = []
    for n, chunk in enumerate(chunks(changed, sizes)):
        expires = history_expiry(chunk, bucket_size)
        body = orjson.dumps([[sender, encode_buckets(value)] for sender, value in chunk])
        out.append((record_key(INMAIL_PREFIX, last_offset, n), body, expires))
    return out


def history_expiry(changed: list[tuple[str, Buckets]], bucket_size: int) -> int:
    """The horizon (``oldest``) at which every recruiter in a record is forgotten."""
    return max(max(value) for _, value in changed) + bucket_size


def decode_history(value: bytes) -> list[tuple[str, Buckets]]:
    return [(sender, decode_buckets(rows)) for sender, rows in orjson.loads(value)]


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
    sizes = [len(sender) + 24 * (len(value) if kind == "r" else 3) + 16
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
        out.append((record_key(prefix, last_offset, n), orjson.dumps(body)))
    return out


def window_of(key: bytes) -> int:
    """The window start of a window record's key."""
    return int(key[len(WINDOW_PREFIX):].split(b":", 1)[0])


def decode_window(value: bytes) -> dict[str, dict[str, Any]]:
    """``{"activity": {sender: counts}, "responses": {sender: {bucket: n}}}``, either
    key present only if the batch added to it."""
    return orjson.loads(value)
