"""The event ids a partition remembers past its in-memory cache: spilled to the store.

Deduplication needs every accepted event id of the last ``DEDUP_HORIZON_SECONDS`` of
event time: at the soak's rate some 700,000 per partition, about 150 bytes each in a
dict, and growing with the input rate, not with any setting. The newest
``STATE_CACHE_EVENT_IDS`` of them stay in that dict (the hot path's look-up); older
ones are *spilled*: their strings leave memory, and what stays of them is

- per changelog record of ids (``\\x00ids:<offset>:<n>``, which the store keeps anyway
  while any id in it is within the horizon: :class:`~streams.ingest.changelog.RecordLives`),
  the sorted 64-bit fingerprints of its ids and the newest ts among them;
- one Bloom filter over all those fingerprints (:mod:`rbloom`, in Rust).

About 10 bytes an id instead of 150. A new id (nearly every event) is answered by the
filter alone, in about 0.1 µs; only a filter hit (0.1 % of new ids, plus every true
duplicate older than the cache) looks for the fingerprint in the records' lists, and
only a fingerprint match reads the record back from the store and compares the ids
themselves, so the answer is exact, whatever collides.

Fingerprints are Python's ``hash()`` of the id: randomised per process, and so never
stored; a restored stage spills again from the store's records.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass

from rbloom import Bloom

from streams.ingest.changelog import ids_newest, ids_record_holds
from streams.store.partition_store import PartitionStore

FALSE_POSITIVE_RATE = 0.001  # ~1.8 bytes an id; a hit costs a few binary searches

Ids = list[tuple[str, float]]  # (event id, ts), as a batch accepted them


@dataclass(slots=True)
class _Spilled:
    key: bytes  # the store's record holding the ids themselves
    newest: float  # ts of its newest id: past the horizon, nothing in it is a duplicate
    fingerprints: array  # sorted hash() of its ids


class SpilledEventIds:
    """The ids of one partition beyond the cache, and the records whose ids are still in
    memory (the cache's units, oldest first: they are spilled in that order)."""

    def __init__(self, store: PartitionStore, cache: int) -> None:
        self.store = store
        self.cache = cache
        self.held: deque[tuple[bytes, float, Ids]] = deque()  # records with ids in memory
        self.spilled: deque[_Spilled] = deque()  # oldest first
        self.fingerprints = 0  # in self.spilled
        self.bloom = Bloom(1, FALSE_POSITIVE_RATE)  # of fingerprints: admit asks it first
        self._bloom_room = 0  # fingerprints the filter takes before it is rebuilt

    def recorded(self, key: bytes, ids: Ids, newest: float, memory: dict[str, float]) -> None:
        """A changelog record of ids (``newest``: its newest ts) was written and staged in
        the store; spill the oldest records' ids while memory holds more than the cache."""
        self.held.append((key, newest, ids))
        while len(memory) > self.cache and self.held:
            self._spill(*self.held.popleft(), memory)

    def _spill(self, key: bytes, newest: float, ids: Ids, memory: dict[str, float]) -> None:
        # one pass: the ids' tuples are scattered through memory, each visit a cache miss
        fingerprints = []
        for event_id, ts in ids:
            seen = memory.pop(event_id, None)
            # the very float object of this acceptance: a later one (the id accepted
            # again past the horizon) stays. `is` spares reading the float, a cache miss
            if seen is not None and seen is not ts:
                memory[event_id] = seen
            fingerprints.append(hash(event_id))
        fingerprints.sort()
        spilled = array("q", fingerprints)
        self.spilled.append(_Spilled(key, newest, spilled))
        self.fingerprints += len(spilled)
        if len(spilled) > self._bloom_room:
            self._rebuild_bloom()
        else:
            self.bloom.update(spilled)
            self._bloom_room -= len(spilled)

    def _rebuild_bloom(self) -> None:
        """A filter sized for twice what is spilled now: dropped records' fingerprints
        leave it only here, and it must never fill past its false-positive rate."""
        capacity = 2 * max(self.fingerprints, self.cache, 1)
        self.bloom = Bloom(capacity, FALSE_POSITIVE_RATE)
        for spilled in self.spilled:
            self.bloom.update(spilled.fingerprints)
        self._bloom_room = capacity - self.fingerprints

    def seen(self, event_id: str, oldest: float) -> bool:
        """Whether a spilled copy of ``event_id`` has ts ``oldest`` or later (the caller
        asked :attr:`bloom` first: ``hash(event_id) in bloom``; most ids stop there)."""
        fingerprint = hash(event_id)
        for spilled in reversed(self.spilled):
            if spilled.newest < oldest:
                continue  # nothing in it is within the horizon
            fingerprints = spilled.fingerprints
            at = bisect_left(fingerprints, fingerprint)
            if at == len(fingerprints) or fingerprints[at] != fingerprint:
                continue
            value = self.store.get(spilled.key)  # None: forgotten with its life
            if value is not None and ids_record_holds(value, event_id, oldest):
                return True
        return False

    def expire(self, oldest: float) -> None:
        """Forget records all of whose ids are older than ``oldest`` (the store forgets
        them with their lives). Their ids in memory go by the core's walk, in the order
        they came: not a second pass over them here."""
        while self.spilled and self.spilled[0].newest < oldest:
            self.fingerprints -= len(self.spilled.popleft().fingerprints)
        while self.held and self.held[0][1] < oldest:
            self.held.popleft()
        if not self.spilled:
            self._bloom_room = 0  # the next spill starts a filter afresh

    def restore(self, records: list[tuple[bytes, Ids]], memory: dict[str, float]) -> None:
        """The store's records of ids, after a restore: the newest ``cache`` ids into
        memory, oldest first as the live stage had them, the others spilled."""
        with_newest = sorted(
            ((key, ids_newest(ids), ids) for key, ids in records if ids),
            key=lambda record: record[1],
        )
        held, in_memory = 0, 0
        while held < len(with_newest) and in_memory < self.cache:
            held += 1
            in_memory += len(with_newest[-held][2])
        cut = len(with_newest) - held
        for key, newest, ids in with_newest[:cut]:
            self._spill(key, newest, ids, memory)
        for key, newest, ids in with_newest[cut:]:
            memory.update(ids)
            self.held.append((key, newest, ids))
