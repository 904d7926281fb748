"""Fetched records as aiokafka decodes them, without its per-record Python work.

:func:`raw_records`, passed as a consumer's ``value_deserializer``, makes ``getmany``
hand out aiokafka's own records (decoded in C) instead of a new ``ConsumerRecord`` per
record, and take them a record batch at a time: aiokafka walks a fetch response one
record at a time through three Python frames (a generator, its ``__next__`` and the
wrapping), about 0.5 µs a record, twice what decoding the record and checking its CRC
cost in C (``python -m bench`` moves a million records through the ingest). Every
stage's input consumer and changelog reader uses it.

What a batch-at-a-time take hands out, and where it leaves the position, is what
aiokafka's own iteration would: control batches and aborted transactions skipped
(read_committed), records below the fetch offset (a fetch returns whole batches, and a
compacted batch can start below it) left out, at most ``max_records``.
"""

from __future__ import annotations

from typing import Any

from aiokafka import errors
from aiokafka.consumer.fetcher import READ_COMMITTED, FetchResult, PartitionRecords


def raw_records(value: bytes | None) -> bytes | None:
    """Pass as ``value_deserializer`` to get aiokafka's own records from ``getmany``.

    aiokafka wraps every fetched record in a new ``ConsumerRecord`` in Python, which
    was the largest single cost of the ingest's fetch (a tenth of its CPU). The record
    it wraps is already there, decoded in C, with the same ``offset``, ``key``,
    ``value``, ``timestamp`` and ``headers``; a consumer with this option gets that one
    (no ``topic``/``partition``: ``getmany`` keys them by partition anyway). Without
    the patch below (another aiokafka) it is an identity deserializer: same values,
    just slower.
    """
    return value


def _install_raw_records() -> None:
    wrap = getattr(PartitionRecords, "_consumer_record", None)
    if wrap is None or getattr(wrap, "raw_records_aware", False):
        return

    def consumer_record(self: Any, tp: Any, record: Any) -> Any:
        if self._value_deserializer is raw_records:
            return record
        return wrap(self, tp, record)

    consumer_record.raw_records_aware = True  # type: ignore[attr-defined]
    PartitionRecords._consumer_record = consumer_record


_install_raw_records()


def _batches(records: Any) -> Any:
    """``(records, next offset)`` for each record batch of a fetch response, as
    aiokafka's ``PartitionRecords._unpack_records`` walks them, a batch at a time."""
    tp, response = records._tp, records._records
    while response.has_next():
        batch = response.next_batch()
        if records._check_crcs and not batch.validate_crc():
            raise errors.CorruptRecordException(f"Invalid CRC - {tp}")
        if records._isolation_level == READ_COMMITTED and batch.producer_id is not None:
            records._consume_aborted_up_to(batch.base_offset)
            if batch.is_control_batch and records._contains_abort_marker(batch):
                records._aborted_producers.discard(batch.producer_id)
            if batch.is_transactional and batch.producer_id in records._aborted_producers:
                records.next_fetch_offset = batch.next_offset
                continue
        if batch.is_control_batch:
            records.next_fetch_offset = batch.next_offset
            continue
        taken = list(batch)
        if taken and taken[0].offset < records.next_fetch_offset:
            taken = [r for r in taken if r.offset >= records.next_fetch_offset]
        yield taken, batch.next_offset


def _take(result: Any, records: Any, max_records: int | None) -> tuple[list[Any], bool]:
    """Up to ``max_records`` of a fetch response's records (None: all), and whether the
    response has none left. ``next_fetch_offset`` ends past the last record taken, or
    past the last batch when a whole one was taken.

    Where the walk is kept matters: on the records it would make a cycle (the walk
    refers to them), and a cycle keeps the whole fetch response until the cycle
    collector runs, which the ingest has it do rarely (measured: 110 MiB more per
    ingest process). On the ``FetchResult``, which nothing the walk holds refers to, a
    response is freed as soon as aiokafka lets go of it, taken to the end or not."""
    state = result.__dict__
    batches = state.get("_raw_batches")
    if batches is None:
        batches = state["_raw_batches"] = _batches(records)
        records._records_iterator = None  # aiokafka's own walk, never started: the cycle
    rest: tuple[list[Any], int, int] | None = state.pop("_raw_rest", None)
    room = max_records if max_records is not None else -1
    taken: list[Any] = []
    while room != 0:
        if rest is None:
            try:
                batch, end = next(batches)
            except StopIteration:
                return taken, True
            rest = (batch, 0, end)
        batch, start, end = rest
        left = len(batch) - start
        if room < 0 or left <= room:
            taken.extend(batch[start:] if start else batch)
            records.next_fetch_offset = end
            room -= left if room > 0 else 0
            rest = None
        else:
            taken.extend(batch[start:start + room])
            records.next_fetch_offset = batch[start + room - 1].offset + 1
            state["_raw_rest"] = (batch, start + room, end)
            room = 0
    return taken, False


def _install_batch_takes() -> None:
    getall, getone = FetchResult.getall, FetchResult.getone
    if getattr(getall, "raw_records_aware", False):
        return

    def batch_getall(self: Any, max_records: int | None = None) -> list[Any]:
        records = self._partition_records
        if records is None or records._value_deserializer is not raw_records:
            return getall(self, max_records)
        if not self.check_assignment(self._topic_partition):
            return []
        taken, exhausted = _take(self, records, max_records)
        self._update_position()
        if exhausted:
            self._partition_records = None
        return taken

    def batch_getone(self: Any) -> Any:
        records = self._partition_records
        if records is None or records._value_deserializer is not raw_records:
            return getone(self)
        taken = batch_getall(self, 1)
        return taken[0] if taken else None

    batch_getall.raw_records_aware = True  # type: ignore[attr-defined]
    FetchResult.getall = batch_getall
    FetchResult.getone = batch_getone


_install_batch_takes()
