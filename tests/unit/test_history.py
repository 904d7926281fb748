"""The history's pure parts: assembling windows across owners, and the write format."""

from __future__ import annotations

import math

from streams.aggregate.closed import ClosedWindow, progress_record
from streams.history.assembly import Assembly, event_time_name
from streams.history.remote_write import Series, decode, encode
from streams.partials import SENT

SENT_KEY = (SENT, "web", "connection", "member", "text")


def window(owner: int, start: int, sent: int, resolution: str = "minute") -> dict:
    size = {"minute": 60, "hour": 3600}[resolution]
    return ClosedWindow(owner, start, start + size, {"all": {SENT_KEY: sent}},
                        resolution).record()


def sent_of(values: dict) -> float:
    return sum(v for (name, labels), v in values.items()
               if name == "messaging_messages_sent" and ("platform", "web") in labels
               and ("channel", "connection") in labels and ("sender_type", "member") in labels
               and ("content_type", "text") in labels)


def test_a_window_is_whole_once_every_owner_is_past_it() -> None:
    assembly = Assembly(owners=3)
    assembly.add(window(0, 0, 5), 0)
    assembly.add(window(1, 0, 7), 1)
    assembly.add(progress_record(0, 60), 2)
    assembly.add(progress_record(1, 60), 3)
    assert assembly.complete()[0] == []  # owner 2 has not said it is past the window
    assembly.add(progress_record(2, 75), 4)  # it had no data there: no record, only this
    windows, through = assembly.complete()
    assert [(w.start, w.owners) for w in windows] == [(0, (0, 1))]
    assert sent_of(windows[0].values) == 12
    assert through == 60
    series = windows[0].series()
    assert {s.timestamp_ms for s in series} == {60_000}
    assert all(s.name.startswith("messaging_eventtime_") for s in series)
    assert not any("window_end" in s.name for s in series)  # the timestamp says it


def test_every_series_is_in_every_window_zeros_included() -> None:
    """The spam reports of an unknown channel too: a series missing from one window
    would let an instant query at the next one pick the older value up."""
    assembly = Assembly(owners=1)
    assembly.add(window(0, 0, 1), 0)
    assembly.add(window(0, 60, 0), 1)
    assembly.add(progress_record(0, 120), 2)
    first, second = assembly.complete()[0]
    assert set(first.values) == set(second.values)
    assert any(name == "messaging_spam_reports" and ("channel", "unknown") in labels
               for name, labels in first.values)


def test_a_repeat_replaces_before_the_write_and_is_ignored_after() -> None:
    assembly = Assembly(owners=2)
    assembly.add(window(0, 0, 5), 0)
    assembly.add(window(0, 0, 5), 1)  # the owner crashed and published it again
    assembly.add(progress_record(0, 60), 2)
    assembly.add(progress_record(1, 60), 3)
    windows, through = assembly.complete()
    assert sent_of(windows[0].values) == 5
    assembly.written(windows, through)
    assembly.add(window(0, 0, 5), 4)  # and again, after the window was written
    assert assembly.pending == {}
    assert assembly.repeats == 1


def test_a_restart_reads_from_the_first_record_it_still_needs() -> None:
    """Replaying the log from the commit point, with ``written_through`` beside it,
    writes what the first run had not, and nothing it had written (whole) in part."""
    log = [
        window(0, 0, 5), window(1, 0, 7), progress_record(0, 60), progress_record(1, 60),
        window(0, 60, 1), progress_record(0, 120), window(0, 0, 5),  # owner 0 repeats
        window(1, 60, 2), progress_record(1, 130),
    ]
    first = Assembly(owners=2)
    for offset, record in enumerate(log[:6]):
        first.add(record, offset)
    windows, through = first.complete()
    first.written(windows, through)
    assert [w.start for w in windows] == [0]
    point = first.commit_point(6)
    assert point == 3  # owner 1's latest progress (and window 60 starts at 4)
    restarted = Assembly.restored(2, first.metadata())
    for offset in range(point, len(log)):
        restarted.add(log[offset], offset)
    windows, through = restarted.complete()
    assert [(w.start, sent_of(w.values)) for w in windows] == [(60, 3)]
    assert through == 120


def test_hours_wait_for_the_same_progress() -> None:
    assembly = Assembly(owners=1)
    assembly.add(window(0, 0, 4, "hour"), 0)
    assembly.add(progress_record(0, 3599), 1)
    assert assembly.complete()[0] == []
    assembly.add(progress_record(0, 3600), 2)
    (hour,), _ = assembly.complete()
    assert hour.resolution == "hour"
    assert {s.name for s in hour.series()} >= {
        event_time_name("messaging_hourly_messages_sent")}


def test_no_commit_metadata_means_nothing_written() -> None:
    for metadata in (None, "", "not json", "[1, 2]", '{"progress": {"x": 1}}'):
        restored = Assembly.restored(2, metadata)
        assert (restored.written_through, restored.progress) == (-math.inf, {}), metadata
    assert Assembly.restored(2, Assembly(2).metadata()).written_through == -math.inf


def test_a_restart_knows_every_owners_progress_not_only_its_latest_record() -> None:
    """An owner restored from an older state sends a lower progress than it had: after a
    restart the history must not wait for it to pass again what it had passed."""
    first = Assembly(owners=2)
    for offset, record in enumerate([
        window(0, 0, 5), progress_record(0, 120), progress_record(1, 60),
        window(0, 60, 1), progress_record(0, 60),  # owner 0 restarted from an older state
    ]):
        first.add(record, offset)
    windows, through = first.complete()
    first.written(windows, through)
    restarted = Assembly.restored(2, first.metadata())
    for offset in range(first.commit_point(5), 5):
        restarted.add([window(0, 0, 5), progress_record(0, 120), progress_record(1, 60),
                       window(0, 60, 1), progress_record(0, 60)][offset], offset)
    restarted.add(progress_record(1, 120), 5)  # owner 1 passes window 60..120
    assert [(w.start, sent_of(w.values)) for w in restarted.complete()[0]] == [(60, 1)]


def test_records_that_are_not_an_owners_are_skipped_and_counted() -> None:
    assembly = Assembly(owners=1)
    for offset, record in enumerate([[1, 2], {"kind": "window"}, {"kind": "progress"}, "x"]):
        assembly.add(record, offset)
    assert assembly.malformed == 4
    assert assembly.pending == {} and assembly.progress == {}


def test_the_write_request_round_trips() -> None:
    series = [Series("messaging_eventtime_blocks", {"platform": "ios"}, 3.0, 60_000),
              Series("messaging_eventtime_active_senders", {}, 1e6, 60_000)]
    assert decode(encode(series)) == series


def test_a_window_prometheus_refuses_does_not_take_its_neighbours_down() -> None:
    """Prometheus rolls a whole request back for one bad sample (e.g. older than its
    out-of-order window): the stage then writes the request's windows one by one."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from streams.history.remote_write import RemoteWriteRejected
    from streams.history.stage import HistoryStage
    from streams.settings import Settings

    assembly = Assembly(owners=1)
    for offset, start in enumerate((0, 60, 120)):
        assembly.add(window(0, start, 1), offset)
    assembly.add(progress_record(0, 180), 3)
    windows, _ = assembly.complete()
    landed: list[int] = []

    class Prometheus:
        async def write(self, series: list[Series]) -> None:
            stamps = {s.timestamp_ms for s in series}
            if 120_000 in stamps:  # window 60..120 is too old, say
                raise RemoteWriteRejected("out of bounds")
            landed.extend(sorted(stamps))

    stage = HistoryStage(Settings(history_remote_write_url="http://127.0.0.1:1/api/v1/write"),
                         CollectorRegistry())
    stage.writer = Prometheus()  # type: ignore[assignment]
    assert asyncio.run(stage._write(windows)) is True
    assert landed == [60_000, 180_000]
    assert stage.metrics.rejected._value.get() == 1
