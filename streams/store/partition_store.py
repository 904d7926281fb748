"""The state one changelog partition holds, on local disk (RocksDB), with the changelog
offset it reflects.

The compacted changelog in Kafka stays the source of truth; this copy only saves
reading it all back. A stage stages the state its changelog records of a batch carry
(:meth:`PartitionStore.stage`) and, once the Kafka transaction holding them committed,
writes them here in one atomic RocksDB write together with the changelog offset of the
last of them (:meth:`PartitionStore.commit`): the local checkpoint. A crash before that
write leaves the checkpoint older than the changelog, and the next restore reads the
changelog from the checkpoint on (records hold whole values: applying one twice is
harmless). A batch whose transaction aborted is dropped with the store (:meth:`close`
without commit), so the store never holds what Kafka does not.

On restore (:meth:`PartitionStore.restore_from`) a store is trusted only if its
checkpoint lies inside the changelog partition (between its start and its end offset);
a store that is missing, unreadable, written by a version that laid its keys out
otherwise (``layout``), or reflects a changelog that is not there any more (older than
the changelog's start: the records in between are gone; newer than its end: the topic
was recreated) is wiped and rebuilt from the whole changelog.

What a stage keeps here is its state as it reads it (e.g. a conversation per key), which
need not be its changelog records' shape (a batch's conversations in one record).
Secondary keys (:meth:`PartitionStore.stage` with ``index``, :meth:`stage_index`) let a
stage walk its state in another order than the key's, e.g. conversations by start time
for expiry. Data, index and checkpoint live under prefixes of their own (``d``, ``i``,
``m``): a key may be any bytes.
"""

from __future__ import annotations

import logging
import shutil
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, WriteBatch

log = logging.getLogger(__name__)

_DATA, _INDEX = b"d", b"i"
CHECKPOINT_KEY = b"m:checkpoint"
LAYOUT_KEY = b"m:layout"  # what the stage's keys and values mean: a store of another is wiped
_UNSTAGED = object()
_OFFSET = struct.Struct(">q")


_MEMORY_PROPERTIES = {
    "memtables": "rocksdb.cur-size-all-mem-tables",
    "block_cache": "rocksdb.block-cache-usage",
    "table_readers": "rocksdb.estimate-table-readers-mem",
}
_USAGE_PROPERTIES = _MEMORY_PROPERTIES | {"sst_files": "rocksdb.total-sst-files-size"}
USAGE_PARTS = tuple(_USAGE_PROPERTIES)  # what :meth:`PartitionStore.usage` reports


def total_usage(stores: Iterable[PartitionStore]) -> dict[str, int]:
    """:meth:`PartitionStore.usage` summed over stores (every part, zero without any); a
    store closed meanwhile (its partition just given up) counts nothing."""
    total = dict.fromkeys(USAGE_PARTS, 0)
    for store in stores:
        try:
            usage = store.usage()
        except Exception as exc:  # noqa: BLE001 - rocksdict's DbClosedError and the like
            log.debug("no usage of %s: %s", store.path, exc)
            continue
        for part, size in usage.items():
            total[part] += size
    return total


class StoreLocked(Exception):
    """Another process has the store open (e.g. a sibling ingest process giving the
    partition up, still finishing its restore)."""


class PartitionStore:
    """RocksDB with a stage's state, plus staged writes, a checkpoint and a layout."""

    def __init__(
        self, path: Path, layout: bytes = b"1", *, write_buffer_bytes: int = 8 << 20,
        block_cache_bytes: int = 8 << 20,
    ) -> None:
        self.path = path
        self.layout = layout
        self.write_buffer_bytes = write_buffer_bytes  # per memtable; two of them at most
        self.block_cache_bytes = block_cache_bytes
        self.rebuilt: str | None = None  # why the store was wiped on open, if it was
        self._pending: dict[bytes, bytes | None] = {}  # prefixed keys, data and index
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open()
        except Exception as exc:  # RocksDB raises plain Exception for everything
            if "lock" in str(exc).lower():  # another process holds it: not ours to wipe
                raise StoreLocked(f"{path}: {str(exc).splitlines()[0][:200]}") from exc
            self.rebuilt = f"unreadable ({str(exc).splitlines()[0][:120]})"
            self.wipe_files()
            self._db = self._open()

    def _open(self) -> Rdict:
        # Memory per store is bounded: two memtables and a block cache, by default 8 MiB
        # each (the ingest: a worker has one store per events partition it owns). At 16 MiB each a worker of
        # four partitions held 1116 MiB after 34M events (9.9M conversations), 957 with
        # 8, at the same events/s (bench --restart and the throughput bench). Bloom
        # filters, in the tables and (a tenth of its size) in the memtable, answer most
        # look-ups of keys not there (every conversation's first message) without a
        # search: a third off the time of a get, measured offline. Their index and filter
        # blocks are held beside the cache (about 1.8 MiB per million conversations):
        # charged to it, they bounded memory but cost the ingest CPU once they no longer
        # fitted (bench/README, session 20).
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)
        table.set_block_cache(Cache(self.block_cache_bytes))
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_paranoid_checks(True)
        options.set_max_open_files(256)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_size(self.write_buffer_bytes)
        options.set_max_write_buffer_number(2)
        options.set_memtable_prefix_bloom_ratio(0.1)
        options.set_memtable_whole_key_filtering(True)
        return Rdict(str(self.path), options=options)

    def wipe_files(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    # --- reading --------------------------------------------------------------------------
    def checkpoint(self) -> int | None:
        """The changelog offset of the last record this store reflects."""
        raw = self._db.get(CHECKPOINT_KEY)
        return None if raw is None else _OFFSET.unpack(raw)[0]

    def get(self, key: bytes) -> bytes | None:
        """The value as of the last staged write (committed or not)."""
        key = _DATA + key
        value = self._pending.get(key, _UNSTAGED)
        return self._db.get(key) if value is _UNSTAGED else value

    def items(self, prefix: bytes, start: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Committed records whose key starts with ``prefix``, in key order from ``prefix +
        start`` (staged writes are not seen: read them with :meth:`get`)."""
        return self._scan(_DATA + prefix, _DATA + prefix + start)

    @property
    def staged(self) -> int:
        """How many writes are staged and not committed (data and index entries)."""
        return len(self._pending)

    def staged_keys(self, prefix: bytes) -> list[bytes]:
        """The keys with ``prefix`` staged and not committed yet (written or deleted)."""
        cut, prefix = len(_DATA), _DATA + prefix
        return [key[cut:] for key in self._pending if key.startswith(prefix)]

    def index(self, prefix: bytes, start: bytes = b"") -> Iterator[bytes]:
        """Committed secondary keys with ``prefix``, in order, from ``prefix + start``."""
        for key, _ in self._scan(_INDEX + prefix, _INDEX + prefix + start):
            yield key

    def _scan(self, prefix: bytes, start: bytes) -> Iterator[tuple[bytes, bytes]]:
        cut = len(_DATA)
        for key, value in self._db.items(from_key=start):
            if not key.startswith(prefix):
                return
            yield key[cut:], value

    # --- writing --------------------------------------------------------------------------
    def stage(self, key: bytes, value: bytes | None, index: tuple[bytes, bool] | None = None) -> None:
        """A changelog record of the transaction in flight; ``index`` is a secondary key to
        add (True) or remove (False) with it."""
        self._pending[_DATA + key] = value
        if index is not None:
            secondary, present = index
            self._pending[_INDEX + secondary] = b"" if present else None

    def stage_all(self, prefix: bytes, items: Iterable[tuple[bytes, bytes | None]]) -> None:
        """:meth:`stage` of many keys that share a prefix, in one call."""
        head, pending = _DATA + prefix, self._pending
        for key, value in items:
            pending[head + key] = value

    def stage_index(self, secondary: bytes, present: bool) -> None:
        """Add or remove a secondary key alone (e.g. one that pointed at a value that has
        moved on, or one that says when a record expires)."""
        self._pending[_INDEX + secondary] = b"" if present else None

    def commit(self, changelog_offset: int | None) -> None:
        """The transaction holding the staged records committed: write them, atomically
        with the changelog offset of its last record (None: it wrote none here)."""
        if not self._pending and changelog_offset is None:
            return
        batch = WriteBatch(raw_mode=True)
        for key, value in self._pending.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if changelog_offset is not None:
            batch.put(CHECKPOINT_KEY, _OFFSET.pack(changelog_offset))
            batch.put(LAYOUT_KEY, self.layout)
        self._db.write(batch)
        self._pending.clear()

    def close(self) -> None:
        """Close; what is staged and not committed is dropped (its transaction is not)."""
        self._pending.clear()
        self._db.close()

    def wipe(self, reason: str) -> None:
        """Empty the store: it does not reflect the changelog."""
        self._db.close()
        self.wipe_files()
        self._db = self._open()
        self.rebuilt = reason

    # --- restore --------------------------------------------------------------------------
    def restore_from(self, beginning: int, end: int) -> int:
        """Where to read the changelog partition from, given its start and end offsets:
        after the checkpoint if the store reflects this changelog, else (wiped) its start."""
        checkpoint = self.checkpoint()
        if self.rebuilt is not None:  # wiped on open: unreadable
            return beginning
        if checkpoint is None:
            if self._has_any():
                self.wipe("no checkpoint")
            elif end > beginning:
                self.rebuilt = "empty"
        elif (layout := self._db.get(LAYOUT_KEY)) != self.layout:
            self.wipe(f"written by another version (layout {layout!r}, this one {self.layout!r})")
        elif checkpoint + 1 < beginning:
            self.wipe(f"older than the changelog (checkpoint {checkpoint}, "
                      f"changelog starts at {beginning})")
        elif checkpoint >= end:
            self.wipe(f"newer than the changelog (checkpoint {checkpoint}, "
                      f"changelog ends at {end})")
        else:
            return checkpoint + 1
        return beginning

    def restore_point(self, stage: str, beginning: int, end: int) -> int:
        """:meth:`restore_from`, and a log line saying why, if the store is rebuilt."""
        start = self.restore_from(beginning, end)
        if self.rebuilt:
            log.info("%s rebuilds its local state %s from the changelog: %s", stage, self.path,
                     self.rebuilt)
        return start

    def count_estimate(self) -> int:
        """RocksDB's estimate of the keys it holds (data, index and bookkeeping)."""
        return self._db.property_int_value("rocksdb.estimate-num-keys") or 0

    def memory_bytes(self) -> dict[str, int]:
        """What RocksDB holds in memory for this store, by part: memtables, the block
        cache, and the table readers (index and filter blocks kept outside the cache)."""
        return self._properties(_MEMORY_PROPERTIES)

    def usage(self) -> dict[str, int]:
        """:meth:`memory_bytes`, and the store's table files on disk (``sst_files``)."""
        return self._properties(_USAGE_PROPERTIES)

    def _properties(self, properties: dict[str, str]) -> dict[str, int]:
        return {part: self._db.property_int_value(name) or 0
                for part, name in properties.items()}

    def _has_any(self) -> bool:
        return next(iter(self._db.keys()), None) is not None
