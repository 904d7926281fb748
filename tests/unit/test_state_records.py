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
    newest.offer(b"p1", b"stale", position_headers(3))  # a stale writer's, behind
    newest.offer(b"p1", b"same place", position_headers(7))
    assert newest.get(b"p1") == b"same place"
    assert newest.superseded == set()


def test_a_record_without_a_position_wins_as_the_last_one_did_before_positions() -> None:
    newest = NewestStates()
    newest.offer(b"p2", b"old a", None)
    newest.offer(b"p2", b"old b", [])
    assert newest.get(b"p2") == b"old b"  # among them, the last
    newest.offer(b"p2", b"new", position_headers(0))
    assert newest.get(b"p2") == b"new" and newest.position(b"p2") == 0
    # a rolling upgrade: an earlier version's worker wrote the newer state after ours
    newest.offer(b"p2", b"ours at 90", position_headers(90))
    newest.offer(b"p2", b"theirs, later", None)
    assert newest.get(b"p2") == b"theirs, later" and newest.superseded == set()
    newest.offer(b"p2", b"ours again at 95", position_headers(95))
    assert newest.get(b"p2") == b"ours again at 95"
    assert newest.get(b"p3") is None and newest.position(b"p3") == -1


def test_the_position_is_read_among_other_headers() -> None:
    assert position_of([("trace", b"x"), ("position", b"12")]) == 12
    assert position_of(None) == -1
    assert position_of([("position", None)]) == -1
