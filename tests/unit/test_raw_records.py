"""A raw-records consumer takes fetched records a batch at a time: it must hand out
exactly what aiokafka's own record-at-a-time iteration does, and leave the position
where it would (pure: record batches built in memory, no broker)."""

from __future__ import annotations

import gc
import struct
import weakref
from typing import Any

import pytest
from aiokafka.consumer.fetcher import (
    READ_COMMITTED,
    READ_UNCOMMITTED,
    FetchResult,
    PartitionRecords,
)
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.kafka.raw_records import raw_records

TP = TopicPartition("events", 0)
_ATTRIBUTES, _CRC = 21, 17  # byte offsets in a v2 record batch
_CONTROL = 0x20
COMMITTED, ABORTED = 7, 9  # producer ids


def batch(base: int, offsets: list[int], producer: int | None = None,
          control: int | None = None) -> bytes:
    """A v2 record batch of records at ``offsets`` (gaps: compacted away); ``control``:
    a transaction marker (0 abort, 1 commit) of ``producer``."""
    builder = DefaultRecordBatchBuilder(
        magic=2, compression_type=0, is_transactional=int(producer is not None),
        producer_id=producer if producer is not None else -1, producer_epoch=0,
        base_sequence=0 if producer is not None else -1, batch_size=1 << 20,
    )
    if control is not None:
        builder.append(0, timestamp=1, key=struct.pack(">hh", 0, control), value=b"",
                       headers=[])
    else:
        for offset in offsets:
            builder.append(offset - base, timestamp=1, key=None, value=b"v%d" % offset,
                           headers=[])
    data = bytearray(builder.build())
    struct.pack_into(">q", data, 0, base)
    if control is not None:
        attributes = struct.unpack_from(">h", data, _ATTRIBUTES)[0] | _CONTROL
        struct.pack_into(">h", data, _ATTRIBUTES, attributes)
        struct.pack_into(">I", data, _CRC, calc_crc32c(bytes(data[_ATTRIBUTES:])))
    return bytes(data)


class Assignment:
    """What ``FetchResult`` asks of aiokafka's assignment state."""

    active, paused = True, False

    def __init__(self, position: int) -> None:
        self.position = position

    def state_value(self, tp: TopicPartition) -> Assignment:
        return self

    def consumed_to(self, position: int) -> None:
        self.position = position


def take_all(response: bytes, aborted: list[tuple[int, int]], fetch_offset: int,
             sizes: list[int | None], raw: bool, isolation: str = READ_COMMITTED,
             ) -> list[tuple[list[int], int]]:
    """Each getall's offsets and the position after it, until the response is done."""
    records = PartitionRecords(
        TP, MemoryRecords(response), aborted, fetch_offset, None,
        raw_records if raw else None, True, isolation,
    )
    assignment = Assignment(fetch_offset)
    result = FetchResult(TP, assignment=assignment, partition_records=records, backoff=0)
    out = []
    for size in [*sizes, None]:
        if not result.has_more():
            break
        taken = result.getall(size)
        out.append(([r.offset for r in taken], assignment.position))
    return out


@st.composite
def responses(draw: Any) -> tuple[bytes, list[tuple[int, int]], int, list[int | None]]:
    """Plain batches, a committed and an aborted transaction's batches with their
    markers, compacted gaps; a fetch offset anywhere; any getall sizes."""
    parts, aborted, offset = [], [], 0
    open_aborted = False
    for kind in draw(st.lists(st.sampled_from(
            ["plain", "committed", "aborted", "commit", "abort"]), min_size=1, max_size=12)):
        if kind in ("commit", "abort"):
            producer = COMMITTED if kind == "commit" else ABORTED
            parts.append(batch(offset, [offset], producer, control=int(kind == "commit")))
            open_aborted = open_aborted and kind != "abort"
            offset += 1
            continue
        count = draw(st.integers(1, 6))
        gaps = draw(st.lists(st.booleans(), min_size=count, max_size=count))
        offsets = [offset + i for i in range(count) if not gaps[i] or i == count - 1]
        producer = {"plain": None, "committed": COMMITTED, "aborted": ABORTED}[kind]
        if kind == "aborted" and not open_aborted:
            aborted.append((ABORTED, offset))
            open_aborted = True
        parts.append(batch(offset, offsets, producer))
        offset += count
    fetch_offset = draw(st.integers(0, offset))
    sizes = draw(st.lists(st.one_of(st.none(), st.integers(1, 8)), max_size=8))
    return b"".join(parts), aborted, fetch_offset, sizes


@settings(max_examples=300, deadline=None)
@given(responses())
def test_a_batch_at_a_time_takes_what_aiokafka_takes(case: Any) -> None:
    response, aborted, fetch_offset, sizes = case
    expected = take_all(response, aborted, fetch_offset, sizes, raw=False)
    assert take_all(response, aborted, fetch_offset, sizes, raw=True) == expected


def test_aborted_and_control_records_are_left_out() -> None:
    response = b"".join([
        batch(0, [0, 1], COMMITTED), batch(2, [2, 3], ABORTED), batch(4, [4], ABORTED, control=0),
        batch(5, [5], COMMITTED, control=1), batch(6, [6, 8]),
    ])
    taken = take_all(response, [(ABORTED, 2)], 0, [3, None], raw=True)
    assert taken == [([0, 1, 6], 7), ([8], 9)]
    uncommitted = take_all(response, [], 0, [None], raw=True, isolation=READ_UNCOMMITTED)
    assert uncommitted == [([0, 1, 2, 3, 6, 8], 9)]


def test_a_fetch_offset_inside_a_batch_leaves_the_records_before_it_out() -> None:
    taken = take_all(batch(10, [10, 11, 12, 13]), [], 12, [1, 1], raw=True)
    assert taken == [([12], 13), ([13], 14), ([], 14)]


def test_a_corrupt_batch_is_refused() -> None:
    data = bytearray(batch(0, [0, 1]))
    data[-1] ^= 0xFF
    with pytest.raises(CorruptRecordException):
        take_all(bytes(data), [], 0, [None], raw=True)


@pytest.mark.parametrize("sizes", [[None], [1]], ids=["taken to the end", "left half-taken"])
def test_a_response_is_freed_without_the_cycle_collector(sizes: list[int | None]) -> None:
    """The ingest runs the cycle collector rarely: a cycle through a response would
    keep every fetch response of the last while in memory."""
    records = PartitionRecords(TP, MemoryRecords(batch(0, [0, 1])), [], 0, None, raw_records,
                               True, READ_COMMITTED)
    result = FetchResult(TP, assignment=Assignment(0), partition_records=records, backoff=0)
    freed = weakref.ref(records)
    gc.disable()
    try:
        for size in sizes:
            result.getall(size)
        del records, result
        assert freed() is None
    finally:
        gc.enable()
