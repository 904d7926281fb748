"""The aggregate owner: merging partials, closing on marks, dedup, late partials, restore."""

from __future__ import annotations

from typing import Any

from streams.aggregate.owner import OwnerState
from streams.partials import encode

T0 = 1_790_000_040


def partial(source: int, offset: int, start: int, counts: dict[tuple[str, ...], int],
            segment: str = "inmail") -> dict[str, Any]:
    return {"kind": "partial", "segment": segment, "source": source, "offset": offset,
            "windows": {str(start): encode(counts)}}


def mark(source: int, watermark: float | None, max_ts: float | None = None, idle: bool = False,
         sources: int = 2) -> dict[str, Any]:
    return {"kind": "mark", "source": source, "sources": sources, "watermark": watermark,
            "max_ts": max_ts if max_ts is not None else watermark, "idle": idle}


SENT = ("sent", "web", "inmail", "member", "text")
EVENT = ("events", "message_sent")


def test_window_closes_once_every_source_has_passed_its_end() -> None:
    state = OwnerState(owner=0, window_size=60)
    state.apply(partial(0, 10, T0, {SENT: 2, EVENT: 2}))
    state.apply(partial(1, 5, T0, {SENT: 3, EVENT: 3}))
    assert state.apply(mark(0, T0 + 60)) == []  # source 1 has not reported
    assert state.watermark.last_closed_start is None
    closed = state.apply(mark(1, T0 + 61))
    assert [(w.start, w.end) for w in closed] == [(T0, T0 + 60)]
    assert closed[0].segments == {"inmail": {SENT: 5, EVENT: 5}}
    assert state.watermark.last_closed_start == T0
    assert state.recent[T0][SENT] == 5
    samples = {(n, tuple(sorted(l.items()))): v for n, l, v in closed[0].record()["samples"]}
    key = tuple(sorted({"platform": "web", "channel": "inmail", "sender_type": "member",
                        "content_type": "text"}.items()))
    assert samples[("messaging_messages_sent", key)] == 5
    assert samples[("messaging_window_end_timestamp_seconds", ())] == T0 + 60


def test_a_redelivered_partial_is_applied_once() -> None:
    state = OwnerState(owner=0, window_size=60)
    state.apply(partial(0, 10, T0, {SENT: 2}))
    state.apply(partial(0, 10, T0, {SENT: 2}))  # the same batch again
    state.apply(partial(0, 9, T0, {SENT: 2}))  # an older one
    state.apply(partial(0, 10, T0, {("read", "web"): 1}, segment="all"))  # other segment
    assert state.windows[T0]["inmail"] == {SENT: 2}
    assert state.duplicates == 2


def test_a_partial_for_a_closed_window_is_counted_late_not_applied() -> None:
    state = OwnerState(owner=0, window_size=60)
    state.apply(mark(0, T0 + 60, sources=1))
    state.apply(partial(0, 3, T0, {SENT: 4, EVENT: 4}))
    assert T0 not in state.windows
    assert state.late_events == 4


def test_state_survives_a_round_trip() -> None:
    state = OwnerState(owner=3, window_size=60)
    state.apply(partial(0, 10, T0, {SENT: 2}))
    state.apply(partial(1, 11, T0 + 60, {SENT: 1}))
    state.apply(mark(0, T0 + 60))
    state.apply(mark(1, None, None, idle=True))  # an empty, idle source
    restored = OwnerState.loads(state.dumps())
    assert restored.dumps() == state.dumps()
    assert restored.watermark.last_closed_start == T0
    assert restored.windows == {T0 + 60: {"inmail": {SENT: 1}}}


def test_active_senders_merge_across_partials_and_close_into_the_all_segment() -> None:
    from streams import distinct

    state = OwnerState(owner=0, window_size=60)
    for source, ids in ((0, ["a", "b", "c"]), (1, ["c", "d"])):
        record = partial(source, 1, T0, {EVENT: len(ids)}, segment="all")
        record["senders"] = {str(T0): distinct.to_text(distinct.sketch_of(ids))}
        state.apply(record)
    restored = OwnerState.loads(state.dumps())
    restored.apply(mark(0, T0 + 60))
    (closed,) = restored.apply(mark(1, T0 + 60))
    assert closed.segments["all"][("active_senders",)] == 4
    assert restored.senders == {}
