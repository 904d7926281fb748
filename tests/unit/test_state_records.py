"""Restoring an aggregate owner: the most advanced state record of each key wins, not the
last one (a worker that kept writing after its partitions moved writes states behind)."""

from __future__ import annotations

from streams.aggregate.state_records import NewestStates, position_headers, position_of


def test_a_record_behind_an_earlier_one_loses_and_is_reported() -> None:
    newest = NewestStates()
    newest.offer(b"p0", b"state at 40", position_headers(40))
    newest.offer(b"p0", b"state at 90", position_headers(90))  # the new owner's newest
    newest.offer(b"p0", b"state at 55", position_headers(55))  # the frozen worker, woken
    assert newest.get(b"p0") == b"state at 90"
    assert newest.position(b"p0") == 90
    assert newest.superseded == {b"p0"}  # to be written again, or compaction keeps 55


def test_equal_positions_take_the_later_and_a_later_lead_clears_the_report() -> None:
    newest = NewestStates()
    newest.offer(b"p1", b"first", position_headers(7))
    newest.offer(b"p1", b"replayed", position_headers(3))  # a restart replaying 3..7
    newest.offer(b"p1", b"same place", position_headers(7))
    assert newest.get(b"p1") == b"same place"
    assert newest.superseded == set()


def test_records_without_a_position_are_older_than_any_with_one() -> None:
    newest = NewestStates()
    newest.offer(b"p2", b"old a", None)
    newest.offer(b"p2", b"old b", [])
    assert newest.get(b"p2") == b"old b"  # among them, the last (as before positions)
    newest.offer(b"p2", b"new", position_headers(0))
    assert newest.get(b"p2") == b"new" and newest.position(b"p2") == 0
    assert newest.get(b"p3") is None and newest.position(b"p3") == -1


def test_the_position_is_read_among_other_headers() -> None:
    assert position_of([("trace", b"x"), ("position", b"12")]) == 12
    assert position_of(None) == -1
