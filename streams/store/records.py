"""Changelog records that hold many items each: their size bound, keys and lives.

A stage that writes a batch's changes as a few records (rather than one per item)
splits them into records of about ``RECORD_BYTES`` at most (:func:`chunks`), keyed by a
prefix, the batch's last input offset and the chunk's number (:func:`record_key`), and
tombstones each record once everything in it is past its horizon
(:class:`RecordLives`), which keeps the compacted changelog bounded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import TypeVar

from streams.store.partition_store import PartitionStore

# counted in characters: even if every one took JSON's longest escape (6 bytes) a
# record would stay below 1 MiB, the broker's default max.message.bytes
RECORD_BYTES = 128 * 1024

Item = TypeVar("Item")

_EXPIRY = struct.Struct(">d")  # big-endian float: index entries sort by time (ts >= 0)
_LIVES = b"x"  # the store's index of live records by expiry time
_LIFE = b"\x00life:"  # + a record's key: its expiry time, in the store


def record_key(prefix: bytes, last_offset: int, n: int) -> bytes:
    return prefix + b"%d:%d" % (last_offset, n)


def chunks(items: list[Item], sizes: list[int], limit: int = RECORD_BYTES) -> list[list[Item]]:
    """``items`` in consecutive runs of at most ``limit`` by ``sizes`` (halved until each
    fits: the sums run in C, where a greedy cut would loop in Python)."""
    if not items:
        return []
    if sum(sizes) <= limit or len(items) == 1:
        return [items]
    half = len(items) // 2
    return (chunks(items[:half], sizes[:half], limit)
            + chunks(items[half:], sizes[half:], limit))


class RecordLives:
    """When each live changelog record may be tombstoned, kept in the partition's store
    (an index entry per record by expiry time, and the record's expiry by its key) so
    that a week of batches' records costs no memory and survives a restart with the
    store. Records whose key starts with one of ``kept`` are also kept in the store
    under their key (e.g. a batch of event ids): they are forgotten there with their life.

    A key written again (input offsets start over when the input topic is recreated,
    and keys are made of them) replaces the record in the compacted changelog: the older
    entry's expiry no longer matches the key's, so it is dropped without a tombstone,
    which would take the newer record with it."""

    def __init__(self, store: PartitionStore, kept: tuple[bytes, ...] = ()) -> None:
        self.store = store
        self.kept = kept
        self._walked_below = b""  # every entry below this was walked already

    def track(self, key: bytes, expires: float) -> None:
        when = _EXPIRY.pack(max(0.0, expires))
        self.store.stage(_LIFE + key, when, (_LIVES + when + key, True))
        # records are written only while not expired (>= now), so this lowers nothing in
        # the stage; it keeps the walk right for any caller that tracks a due record
        self._walked_below = min(self._walked_below, when)

    def expired(self, now: float) -> Iterator[bytes]:
        """The keys of records past their expiry, each forgotten by the store as it is
        yielded (a kept record's copy too): the caller tombstones it in the changelog.

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
            if self.kept and key.startswith(self.kept):
                store.stage(key, None)
            yield key
        self._walked_below = _EXPIRY.pack(now)
