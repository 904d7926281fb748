"""The records one ingest batch of one input partition sends downstream (pure).

Shared by the live ingest stage and the offline replay, so both feed the aggregate
owners and the risk owners exactly the same records.
"""

from __future__ import annotations

from typing import Any

from streams import distinct
from streams.ingest.conversations import BatchWindows
from streams.kafka.io import partition_for
from streams.partials import GLOBAL_SEGMENT, Partial, encode, split_by_segment
from streams.windows import PartitionClock, finite_or_none

Record = dict[str, Any]


def partial_records(
    source: int, last_offset: int, batch: BatchWindows, partials_partitions: int
) -> list[tuple[int, bytes, Record]]:
    """``(partials partition, key, record)``: one record per segment, keyed by segment.

    Besides the minute windows' counts, a record carries the segment's cohort counts:
    ``cohorts["hour"]`` by the hour of the conversations' start (replies), and
    ``cohorts["day"]`` by the day of the InMails' send (responses).
    """
    by_segment: dict[str, Record] = {}

    def put(start: int, counts: Partial, resolution: str | None = None) -> None:
        for segment, share in split_by_segment(counts).items():
            record = by_segment.setdefault(segment, {"windows": {}})
            target = record["windows"] if resolution is None else (
                record.setdefault("cohorts", {}).setdefault(resolution, {})
            )
            target[str(start)] = encode(share)

    for start, counts in batch.counts.items():
        put(start, counts)
    for resolution, cohorts in (("hour", batch.reply_cohorts), ("day", batch.inmail_cohorts)):
        for start, counts in cohorts.items():
            put(start, counts, resolution)
    out = []
    for segment, parts in by_segment.items():
        record: Record = {
            "kind": "partial", "segment": segment, "source": source, "offset": last_offset,
            **parts,
        }
        if segment == GLOBAL_SEGMENT and batch.senders:
            record["senders"] = {
                str(start): distinct.to_text(distinct.sketch_of(ids))
                for start, ids in batch.senders.items()
            }
        key = segment.encode()
        out.append((partition_for(key, partials_partitions), key, record))
    return out


def activity_records(
    source: int, last_offset: int, batch: BatchWindows, activity_partitions: int
) -> list[tuple[int, Record]]:
    """Per-sender activity, one record per activity partition: repartitioned by sender.
    Recruiters' InMail responses travel with it, by the window they came in."""
    targets: dict[int, dict[str, dict[str, list[int]]]] = {}
    for start, senders in batch.activity.items():
        window = str(start)
        for sender, counts in senders.items():
            partition = partition_for(sender, activity_partitions)
            target = targets.get(partition)
            if target is None:
                target = targets[partition] = {}
            by_window = target.get(window)
            if by_window is None:
                by_window = target[window] = {}
            by_window[sender] = counts
    records = {
        target: {"kind": "activity", "source": source, "offset": last_offset,
                 "windows": windows}
        for target, windows in targets.items()
    }
    for start, senders in batch.inmail_responses.items():
        for sender, buckets in senders.items():
            partition = partition_for(sender, activity_partitions)
            record = records.setdefault(partition, {
                "kind": "activity", "source": source, "offset": last_offset, "windows": {},
            })
            responses = record.setdefault("inmail_responses", {}).setdefault(str(start), {})
            responses[sender] = {str(b): n for b, n in buckets.items()}
    return list(records.items())


def mark_record(source: int, sources: int, clock: PartitionClock) -> Record:
    """How far one input partition has got: its watermark, newest ts and idleness."""
    return {
        "kind": "mark", "source": source, "sources": sources,
        "watermark": finite_or_none(clock.watermark), "max_ts": finite_or_none(clock.max_ts),
        "idle": clock.idle,
    }
