"""The conversations one input partition remembers: all in memory, or on disk behind a
bounded cache.

:class:`MemoryConversations` keeps every conversation in a dict (the replay, unit tests:
pure code, no disk). :class:`StoredConversations` keeps them in the partition's
:class:`~streams.store.partition_store.PartitionStore` (RocksDB) and only the most
recently used in memory, so a worker's memory does not grow with the number of
conversations it remembers and a restart on the same disk reads only the changelog's
tail. Both answer the same questions with the same results:

- :meth:`get` a conversation by id (expired or not: the caller applies the TTL);
- :meth:`add` a new one; a change to one it returned is made on the object itself;
- :meth:`expire`: drop those started before a horizon (InMail ones, which count their
  responses for 30 days, before a longer one) and say which.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from itertools import islice
from operator import itemgetter
from typing import Literal

import msgspec

from streams.events import CHANNELS, SENDER_TYPES
from streams.store.partition_store import PartitionStore


class Conversation(msgspec.Struct, array_like=True, gc=False):
    """One conversation's start. Not tracked by Python's cycle collector (it holds only
    strings, a float and a bool): a partition holds hundreds of thousands of these, and
    with them tracked the collector's full passes took a third of the ingest's time.
    The channel and starter type are literals: decoded, every conversation shares the
    one string of each value instead of holding copies (a ninth of a cached one)."""

    started_at: float
    starter_id: str
    recipient_id: str
    channel: Literal[CHANNELS]  # type: ignore[valid-type]
    starter_type: Literal[SENDER_TYPES]  # type: ignore[valid-type]
    replied: bool = False
    responded: bool = False  # an InMail's first response: a reply or an answer

    def dumps(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def loads(cls, raw: bytes) -> Conversation:
        return _CONVERSATION_DECODER.decode(raw)


_ENCODER = msgspec.json.Encoder()
_CONVERSATION_DECODER = msgspec.json.Decoder(Conversation)
# A conversation a batch changed, as the batch's end needs it: its JSON (the store's
# value and, embedded, the changelog's), its start and whether it is an InMail one
# (the changelog record it goes to, and that record's life)
Touched = tuple[bytes, float, bool]


_START = struct.Struct(">d")  # big-endian float: keys sort by start time for ts >= 0
_COMMON, _INMAIL = b"c", b"m"  # the two expiry indexes: other channels, InMail
_KEY = b"c"  # a conversation's key in the store: this + its id
# A batch's new conversations' starts, in one store entry per expiry index, keyed by the
# earliest of them: "s" + index + that start + that conversation's id -> [[id, start],
# ...]. One write per batch rather than an index entry per conversation, which was 40%
# of the ingest's store writes (each a memtable insert: ~1 us).
_STARTS = b"s"
Starts = list[tuple[str, float]]
_STARTS_ENCODER = msgspec.json.Encoder()
_STARTS_DECODER = msgspec.json.Decoder(Starts)


class MemoryConversations:
    """Every conversation in memory, in start order (the order expiry walks)."""

    def __init__(self) -> None:
        self._common: dict[str, Conversation] = {}
        # InMail conversations past the usual TTL but within the InMail one, also by start
        self._inmail: dict[str, Conversation] = {}

    def __len__(self) -> int:
        return len(self._common) + len(self._inmail)

    def get(self, conversation_id: str) -> Conversation | None:
        conversation = self._common.get(conversation_id)
        if conversation is None and self._inmail:
            conversation = self._inmail.get(conversation_id)
        return conversation

    def add(self, conversation_id: str, conversation: Conversation) -> None:
        self._common[conversation_id] = conversation

    def stage(self, touched: dict[str, Touched]) -> None:
        """Nothing to write: every conversation is in memory."""

    def expire(self, oldest: float, oldest_inmail: float) -> list[str]:
        dropped, moved = [], []
        for conversation_id, conversation in self._common.items():
            if conversation.started_at >= oldest:
                break  # started in time order, so the rest are younger
            if conversation.channel == "inmail" and conversation.started_at >= oldest_inmail:
                moved.append(conversation_id)
            else:
                dropped.append(conversation_id)
        for conversation_id in dropped:
            del self._common[conversation_id]
        for conversation_id in moved:
            self._inmail[conversation_id] = self._common.pop(conversation_id)
        expired_inmail = []
        for conversation_id, conversation in self._inmail.items():
            if conversation.started_at >= oldest_inmail:
                break
            expired_inmail.append(conversation_id)
        for conversation_id in expired_inmail:
            del self._inmail[conversation_id]
        return dropped + expired_inmail


class StoredConversations:
    """Conversations in a :class:`PartitionStore`, the ``cache_size`` most recently used
    also in memory as objects.

    A conversation changed by the batch in flight must not be evicted before its new
    value is staged (the change is on the cached object), so the cache is trimmed only
    by :meth:`stage`, after the batch's changes are in the store's staged writes. In
    the store a conversation is ``c`` + its id, its value its JSON (ids are any text: the
    prefix keeps them apart from the changelog's own keys there).
    """

    def __init__(self, store: PartitionStore, cache_size: int) -> None:
        self.store = store
        self.cache_size = cache_size
        self._cache: dict[str, Conversation] = {}  # least recently used first
        self._added: dict[str, Conversation] = {}  # new in the batch in flight
        self._expired_below = {_COMMON: b"", _INMAIL: b""}  # skip what expiry deleted

    def get(self, conversation_id: str) -> Conversation | None:
        cache = self._cache
        conversation = cache.pop(conversation_id, None)
        if conversation is None:
            raw = self.store.get(_KEY + conversation_id.encode())
            if raw is None:
                return None
            conversation = Conversation.loads(raw)
        cache[conversation_id] = conversation  # now the most recently used
        return conversation

    def add(self, conversation_id: str, conversation: Conversation) -> None:
        self._cache[conversation_id] = conversation
        self._added[conversation_id] = conversation

    def stage(self, touched: dict[str, Touched]) -> None:
        """The batch's changed conversations into the store's staged writes; then the
        cache is trimmed to its size. (The new ones' starts are staged by
        :meth:`expire`, once it has dropped those already past their TTL.)"""
        cache = self._cache
        self.store.stage_all(_KEY, [(cid.encode(), raw) for cid, (raw, _, _) in touched.items()])
        excess = len(cache) - self.cache_size
        if excess > 0:
            for conversation_id in list(islice(cache, excess)):  # the least recently used
                del cache[conversation_id]

    def _stage_starts(self, starts: dict[bytes, Starts]) -> None:
        for index, group in starts.items():
            if group:
                first = min(group, key=itemgetter(1))
                self.store.stage(_starts_key(index, first), _STARTS_ENCODER.encode(group))

    def restore(self, changed: Iterable[tuple[str, Conversation]]) -> None:
        """Conversations read back from the changelog: into the store (the caller
        commits), with their starts. A starts entry that names a conversation's earlier
        life (an id reused past its TTL), or one that expiry already dropped, is skipped
        by expiry."""
        stage = self.store.stage
        starts: dict[bytes, Starts] = {_COMMON: [], _INMAIL: []}
        for conversation_id, conversation in changed:
            stage(_KEY + conversation_id.encode(), conversation.dumps())
            starts[_index_of(conversation)].append((conversation_id, conversation.started_at))
        self._stage_starts(starts)

    def restored(self) -> None:
        self._cache.clear()

    def expire(self, oldest: float, oldest_inmail: float) -> list[str]:
        """Those started before the horizon: by the store's starts entries, and among those
        new in the batch in flight (staged, not in the entries walked yet: a batch may
        span more than the TTL). Called once per batch, after :meth:`stage`. An entry
        whose conversations are not all due yet is written again under the earliest
        start left."""
        store, cache = self.store, self._cache
        dropped = []
        # a change never moves a conversation's start: only the new ones need an entry,
        # and one keyed by a start below what expiry has walked would never be walked
        starts: dict[bytes, Starts] = {_COMMON: [], _INMAIL: []}
        for conversation_id, conversation in self._added.items():
            inmail = conversation.channel == "inmail"
            if conversation.started_at < (oldest_inmail if inmail else oldest):
                store.stage(_KEY + conversation_id.encode(), None)
                cache.pop(conversation_id, None)
                dropped.append(conversation_id)
            else:
                starts[_INMAIL if inmail else _COMMON].append(
                    (conversation_id, conversation.started_at))
        self._added.clear()
        self._stage_starts(starts)
        for index, horizon in ((_COMMON, oldest), (_INMAIL, oldest_inmail)):
            if horizon < 0:
                continue
            bound = index + _START.pack(horizon)
            for entry, value in store.items(_STARTS + index, self._expired_below[index]):
                if entry[len(_STARTS):] >= bound:
                    break
                store.stage(entry, None)
                left: Starts = []
                for conversation_id, started_at in _STARTS_DECODER.decode(value):
                    if started_at >= horizon:
                        left.append((conversation_id, started_at))
                        continue
                    key = _KEY + conversation_id.encode()
                    current = store.get(key)
                    if current is None or Conversation.loads(current).started_at != started_at:
                        continue  # gone, or started again since: not this life
                    store.stage(key, None)
                    cache.pop(conversation_id, None)
                    dropped.append(conversation_id)
                if left:
                    store.stage(_starts_key(index, min(left, key=itemgetter(1))),
                                _STARTS_ENCODER.encode(left))
            self._expired_below[index] = _START.pack(horizon)
        return dropped


def _index_of(conversation: Conversation) -> bytes:
    return _INMAIL if conversation.channel == "inmail" else _COMMON


def _starts_key(index: bytes, first: tuple[str, float]) -> bytes:
    conversation_id, started_at = first
    return _STARTS + index + _START.pack(max(0.0, started_at)) + conversation_id.encode()
