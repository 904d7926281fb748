"""Recruiters' InMail history over the horizon: in memory, or on disk.

For each recruiter, by send bucket (a day), the InMails sent and the responses they got:
``{bucket: [sent, responses]}``. A bucket is past the horizon once ``bucket + bucket
size <= oldest`` (``oldest``: the end of the window being closed minus the horizon), and
a recruiter whose newest bucket is past it is forgotten. :class:`InmailHistory` holds the
logic, once; where the values live is a table's business:

- :class:`MemoryInmail`: a dict (the replay, unit tests: pure code, no disk);
- :class:`StoredInmail`: the risk partition's
  :class:`~streams.store.partition_store.PartitionStore` (RocksDB), so that a worker's
  memory does not grow with the recruiters it remembers. The history is read only when
  a window closes, for the senders with InMail activity in it.

Expiry does work in proportion to what it forgets, not to every recruiter remembered:
each table keeps an index of recruiters by the time their newest bucket passes the
horizon (their *due* time), and a window close walks only the due part of it. Buckets
past the horizon of a recruiter still remembered are dropped when the recruiter is next
written, and never counted (:meth:`InmailHistory.totals`), so what is judged is what an
eager expiry of every recruiter at every close gave.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import msgspec
import orjson

from streams.store.partition_store import PartitionStore

Buckets = dict[int, list[int]]  # send bucket -> [InMails sent, responses]

_VALUE = b"h"  # a recruiter's history in the store: this + its id
_DUE = b"n"  # the store's index by due time: this + the time (sortable) + the value's key
_SIGN = 1 << 63
# Values staged for the store (and the changelog) are encoded by msgspec, not orjson: an
# orjson.dumps result of a few dozen bytes keeps orjson's 4 KiB output buffer, and a
# window close or a restore stages one per recruiter until the store's commit (250,000
# small values: 982 MiB with orjson, 25 MiB with msgspec, which allocates the exact size).
_ENCODER = msgspec.json.Encoder()


class InmailTable(Protocol):
    def get(self, sender: str) -> Buckets | None: ...

    def put(self, sender: str, value: Buckets | None, was: int | None, due: int | None) -> None:
        """Write a sender's value (None: forget it); ``was`` and ``due``: the due times of
        its old and new values (None: none), for the index."""

    def due(self, oldest: int) -> list[tuple[str, int]]:
        """Index entries ``(sender, due time)`` due at ``oldest`` (possibly stale), each
        handed out once: the caller forgets the sender or :meth:`unindex` es the entry."""

    def unindex(self, sender: str, due: int) -> None: ...

    def items(self) -> Iterator[tuple[str, Buckets]]: ...


class InmailHistory:
    """What the risk rules ask of the history; ``changed`` (when not None) collects the
    senders whose value was written or forgotten, for the changelog (a forgotten one's
    record is tombstoned)."""

    def __init__(self, table: InmailTable, bucket_size: int) -> None:
        self.table = table
        self.bucket_size = bucket_size
        self.changed: set[str] | None = None

    def get(self, sender: str) -> Buckets | None:
        return self.table.get(sender)

    def add(self, sender: str, bucket: int, sent: int, responses: dict[int, int],
            oldest: int) -> None:
        """A closing window's InMails sent in ``bucket`` and responses by their send
        bucket; then the buckets past the horizon go."""
        value = self.table.get(sender)
        was = None if value is None else self._due(value)
        value = {} if value is None else value
        for response_bucket, count in responses.items():
            value.setdefault(response_bucket, [0, 0])[1] += count
        if sent:
            value.setdefault(bucket, [0, 0])[0] += sent
        for old in [b for b in value if b + self.bucket_size <= oldest]:
            del value[old]
        if not value and was is None:
            return
        self.table.put(sender, value or None, was, self._due(value) if value else None)
        if self.changed is not None:
            self.changed.add(sender)

    def totals(self, sender: str, oldest: int) -> tuple[int, int]:
        """InMails sent and responses over the horizon."""
        value = self.table.get(sender) or {}
        size, sent, responses = self.bucket_size, 0, 0
        for bucket, (bucket_sent, bucket_responses) in value.items():
            if bucket + size > oldest:
                sent += bucket_sent
                responses += bucket_responses
        return sent, responses

    def expire(self, oldest: int) -> None:
        """Forget the senders whose newest bucket is past the horizon."""
        table = self.table
        for sender, due in table.due(oldest):
            value = table.get(sender)
            if value is not None and self._due(value) == due:
                table.put(sender, None, due, None)
                if self.changed is not None:
                    self.changed.add(sender)
            else:  # forgotten already, or written since with a newer bucket
                table.unindex(sender, due)

    def restore(self, sender: str, value: Buckets) -> None:
        """A sender's whole value, read back from the changelog (the latest wins)."""
        old = self.table.get(sender)
        self.table.put(sender, value or None, None if old is None else self._due(old),
                       self._due(value) if value else None)

    def forget(self, sender: str) -> None:
        """A sender's tombstone, read back from the changelog."""
        old = self.table.get(sender)
        if old is not None:
            self.table.put(sender, None, self._due(old), None)

    def items(self) -> Iterator[tuple[str, Buckets]]:
        return self.table.items()

    def _due(self, value: Buckets) -> int:
        return max(value) + self.bucket_size


class _DueIndex:
    """Senders by due time, in memory (few distinct times: one per bucket)."""

    def __init__(self) -> None:
        self._by_due: dict[int, set[str]] = {}

    def add(self, sender: str, due: int) -> None:
        self._by_due.setdefault(due, set()).add(sender)

    def discard(self, sender: str, due: int) -> None:
        senders = self._by_due.get(due)
        if senders is not None:
            senders.discard(sender)
            if not senders:
                del self._by_due[due]

    def pop_due(self, oldest: int) -> list[tuple[str, int]]:
        out = []
        for due in sorted(d for d in self._by_due if d <= oldest):
            out.extend((sender, due) for sender in sorted(self._by_due.pop(due)))
        return out

    def clear(self) -> None:
        self._by_due.clear()


class MemoryInmail:
    """Every sender's history in a dict."""

    def __init__(self) -> None:
        self._values: dict[str, Buckets] = {}
        self._index = _DueIndex()

    def get(self, sender: str) -> Buckets | None:
        return self._values.get(sender)

    def put(self, sender: str, value: Buckets | None, was: int | None, due: int | None) -> None:
        if was is not None and was != due:
            self._index.discard(sender, was)
        if value is None:
            self._values.pop(sender, None)
            return
        self._values[sender] = value
        if due is not None and due != was:
            self._index.add(sender, due)

    def due(self, oldest: int) -> list[tuple[str, int]]:
        return self._index.pop_due(oldest)

    def unindex(self, sender: str, due: int) -> None:
        self._index.discard(sender, due)

    def items(self) -> Iterator[tuple[str, Buckets]]:
        return iter(list(self._values.items()))


class StoredInmail:
    """Every sender's history in a :class:`PartitionStore`: ``h`` + its id, its value
    ``[[bucket, sent, responses], ...]``; the index by due time beside it. The store's
    index shows committed entries only, so the entries staged since the last commit
    (:meth:`committed`) are also kept in memory, for a close later in the same batch."""

    def __init__(self, store: PartitionStore) -> None:
        self.store = store
        self._fresh = _DueIndex()  # entries staged since the last commit
        self._walked_below = b""  # every committed entry below this was walked already

    def get(self, sender: str) -> Buckets | None:
        raw = self.store.get(_VALUE + sender.encode())
        return None if raw is None else decode_buckets(orjson.loads(raw))

    def put(self, sender: str, value: Buckets | None, was: int | None, due: int | None) -> None:
        key = _VALUE + sender.encode()
        if was is not None and was != due:
            self.store.stage_index(_DUE + _sortable(was) + key, False)
            self._fresh.discard(sender, was)
        if value is None:
            self.store.stage(key, None)
            return
        entry = None
        if due is not None and due != was:
            entry = (_DUE + _sortable(due) + key, True)
            self._fresh.add(sender, due)
        self.store.stage(key, dump_buckets(value), entry)

    def due(self, oldest: int) -> list[tuple[str, int]]:
        out = []
        bound = _sortable(oldest + 1)
        for entry in self.store.index(_DUE, self._walked_below):
            when = entry[len(_DUE):len(_DUE) + 8]
            if when >= bound:
                break
            out.append((entry[len(_DUE) + 8 + len(_VALUE):].decode(), _unsortable(when)))
        self._walked_below = max(self._walked_below, bound)
        out.extend(self._fresh.pop_due(oldest))  # an entry in both: the second is stale
        return out

    def unindex(self, sender: str, due: int) -> None:
        self.store.stage_index(_DUE + _sortable(due) + _VALUE + sender.encode(), False)
        self._fresh.discard(sender, due)

    def items(self) -> Iterator[tuple[str, Buckets]]:
        """Every sender's value, staged writes included (an upgrade writes them all)."""
        staged = set(self.store.staged_keys(_VALUE))
        keys = [key for key, _ in self.store.items(_VALUE) if key not in staged]
        for key in [*keys, *sorted(staged)]:
            sender = key[len(_VALUE):].decode()
            value = self.get(sender)
            if value is not None:
                yield sender, value

    def committed(self) -> None:
        """The staged writes are in the store: its index shows their entries now."""
        self._fresh.clear()


def encode_buckets(value: Buckets) -> list[list[int]]:
    return [[bucket, sent, responses] for bucket, (sent, responses) in value.items()]


def dump_buckets(value: Buckets) -> bytes:
    """A history's JSON, ``[[bucket, sent, responses], ...]``, sized exactly (msgspec)."""
    return _ENCODER.encode(encode_buckets(value))


def decode_buckets(rows: list[list[int]]) -> Buckets:
    return {bucket: [sent, responses] for bucket, sent, responses in rows}


def _sortable(value: int) -> bytes:
    """Signed integers as bytes that sort as the numbers do."""
    return (value + _SIGN).to_bytes(8, "big")


def _unsortable(raw: bytes) -> int:
    return int.from_bytes(raw, "big") - _SIGN
