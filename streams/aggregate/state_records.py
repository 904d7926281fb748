"""The aggregate owner's state records, as the agent writes them and reads them back.

The agent writes its whole state after each partials record, at least once and without
a transaction. A worker that was frozen (a stalled VM) or cut off from the group's
coordinator but not from the partition's leader keeps writing for a moment after the
group gave its partitions to another worker: states along the same path, but behind the
new owner's. Landing after the new owner's newest record, one of them would be restored
at the next rebalance, and the partials in between, already committed past by the new
owner, would never be applied again.

So every state record carries its position (the partials offset the state reflects, a
header), and a restore takes the most advanced record of each key, not the last one.
Positions only grow along an owner's path (the position is the highest offset applied
so far: an owner replaying records its state already holds keeps it). A record without
the header was written by an earlier version, which knew no positions: as then, the
later record wins (during a rolling upgrade it is the newer state), and the next with a
position is compared with it as with none.
"""

from __future__ import annotations

from collections.abc import Iterable

POSITION_HEADER = "position"

Headers = Iterable[tuple[str, bytes | None]]


def position_headers(position: int) -> list[tuple[str, bytes]]:
    return [(POSITION_HEADER, str(position).encode())]


def position_of(headers: Headers | None) -> int:
    """The record's position; -1 if it has none (an earlier version's record)."""
    for name, value in headers or ():
        if name == POSITION_HEADER and value:
            return int(value)
    return -1


class NewestStates:
    """Per key, the most advanced record read so far (of equal positions, the later; a
    record without a position is taken as it comes, as before positions existed)."""

    def __init__(self) -> None:
        self.values: dict[bytes | None, bytes | None] = {}
        self.positions: dict[bytes | None, int] = {}
        self.superseded: set[bytes | None] = set()  # a less advanced record came later

    def offer(self, key: bytes | None, value: bytes | None, headers: Headers | None) -> None:
        position = position_of(headers)
        if position == -1 or position >= self.positions.get(key, -1):
            self.values[key] = value
            self.positions[key] = position
            self.superseded.discard(key)
        else:
            self.superseded.add(key)

    def get(self, key: bytes) -> bytes | None:
        return self.values.get(key)

    def position(self, key: bytes) -> int:
        return self.positions.get(key, -1)
