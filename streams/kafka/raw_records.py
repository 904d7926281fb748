"""Fetched records as aiokafka decodes them, without its per-record Python wrapping.

:func:`raw_records`, passed as a consumer's ``value_deserializer``, makes ``getmany``
hand out aiokafka's own records (decoded in C) instead of a new ``ConsumerRecord`` per
record. Every stage's input consumer and changelog reader uses it.
"""

from __future__ import annotations

from typing import Any

from aiokafka.consumer.fetcher import PartitionRecords


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
