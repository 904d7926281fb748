"""Hours and days rolled up from closed minute windows, with fixed UTC timestamps."""

from __future__ import annotations

import random
from typing import Any

import pytest

from streams import distinct
from streams.aggregate.owner import OwnerState
from streams.aggregate.rollups import Rollups
from streams.partials import encode, merged
from tests.unit.test_owner import EVENT, SENT, mark, partial

DAY0 = 1_789_948_800  # 2026-09-21T00:00:00Z
HOUR = 3600
DAY = 86_400
LATENCY = ("latency_bucket", "inmail", "4")


def senders_partial(source: int, offset: int, start: int, ids: list[str]) -> dict[str, Any]:
    record = partial(source, offset, start, {EVENT: len(ids)}, segment="all")
    record["senders"] = {str(start): distinct.to_text(distinct.sketch_of(ids))}
    return record


def close_all(state: OwnerState, until: float) -> list[Any]:
    return state.apply(mark(0, until, sources=1))


def test_an_hour_is_the_exact_merge_of_its_minutes() -> None:
    rng = random.Random(3)
    state = OwnerState(owner=0, window_size=60)
    minutes = []
    for i, start in enumerate(range(DAY0 + 9 * HOUR, DAY0 + 10 * HOUR, 60)):
        counts = {SENT: rng.randrange(50), EVENT: rng.randrange(50), LATENCY: rng.randrange(5)}
        minutes.append(counts)
        state.apply(partial(0, i, start, counts))
        if i % 7 == 0:  # close as the run goes, as marks arrive
            state.apply(mark(0, start + 60, sources=1))
    closed = close_all(state, DAY0 + 10 * HOUR)
    (hour,) = [w for w in closed if w.resolution == "hour"]
    assert (hour.start, hour.end) == (DAY0 + 9 * HOUR, DAY0 + 10 * HOUR)
    assert hour.segments == {"inmail": merged(minutes)}
    assert state.rollups.recent["hour"][hour.start] == merged(minutes)
    assert hour.record()["resolution"] == "hour"
    assert hour.key == f"hour:{hour.start}".encode()
    names = {name for name, _, _ in hour.record()["samples"]}
    assert "messaging_hourly_messages_sent" in names and "messaging_messages_sent" not in names


def test_a_days_senders_estimate_the_same_as_one_sketch_of_them_all() -> None:
    rng = random.Random(5)
    everyone = [f"m{i}" for i in range(30_000)]
    state = OwnerState(owner=0, window_size=60)
    seen: set[str] = set()
    offset = 0
    for start in range(DAY0, DAY0 + DAY, 15 * 60):  # a minute window every 15 minutes
        for source in (0, 1):  # two sources' partials per window, overlapping senders
            ids = rng.sample(everyone, 400)
            seen.update(ids)
            offset += 1
            state.apply(senders_partial(source, offset, start, ids))
    state.apply(mark(0, DAY0 + DAY, sources=2))
    closed = state.apply(mark(1, DAY0 + DAY, sources=2))
    (day,) = [w for w in closed if w.resolution == "day"]
    one_sketch = distinct.estimate(distinct.union([distinct.sketch_of(seen)]))
    assert day.segments["all"][("active_senders",)] == one_sketch
    # the minute windows' own estimates are not added up into the day
    minutes = [w for w in closed if w.resolution == "minute"]
    assert sum(w.segments["all"][("active_senders",)] for w in minutes) > one_sketch


def test_hours_and_days_close_on_the_watermark_not_on_idleness() -> None:
    state = OwnerState(owner=0, window_size=60)
    state.apply(partial(0, 1, DAY0 + 10 * HOUR + 120, {SENT: 1, EVENT: 1}))
    # every source idle: the newest minute closes, the hour it is in does not
    closed = state.apply(mark(0, None, DAY0 + 10 * HOUR + 150, idle=True, sources=1))
    assert [w.resolution for w in closed] == ["minute"]
    assert DAY0 + 10 * HOUR in state.rollups.open["hour"]
    # a quiet hour end: no minute closes, the hour does
    closed = state.apply(mark(0, DAY0 + 11 * HOUR, sources=1))
    assert [(w.resolution, w.start) for w in closed] == [("hour", DAY0 + 10 * HOUR)]


@pytest.mark.parametrize("days", [3, 10, 40])
def test_trailing_actives_cover_7_and_28_closed_days_and_history_is_bounded(days: int) -> None:
    rollups = Rollups()
    per_day = [{f"d{d}-m{i}" for i in range(50)} | {"always"} for d in range(days)]
    for d, ids in enumerate(per_day):
        start = DAY0 + d * DAY
        rollups.add(start, {"all": {EVENT: 1}}, distinct.union([distinct.sketch_of(ids)]))
        (closed,) = [w for w in rollups.close(0, start + DAY) if w.resolution == "day"]
    everyone = closed.segments["all"]

    def expected(n: int) -> int:
        ids = set().union(*per_day[-n:])
        return distinct.estimate(distinct.union([distinct.sketch_of(ids)]))

    assert everyone[("active_senders", "7d")] == expected(7)
    assert everyone[("active_senders", "28d")] == expected(28)
    assert len(rollups.days) == min(days, 28)
    restored = Rollups.from_json(rollups.to_json())
    restored.restore_history(rollups.history_json())
    assert restored.days == rollups.days


def test_open_rollups_survive_the_owner_state_round_trip() -> None:
    state = OwnerState(owner=1, window_size=60)
    state.apply(senders_partial(0, 1, DAY0 + 60, ["a", "b"]))
    state.apply(partial(0, 2, DAY0 + 120, {SENT: 3}))
    close_all(state, DAY0 + 180)
    restored = OwnerState.loads(state.dumps())
    assert restored.dumps() == state.dumps()
    assert restored.rollups.open["day"][DAY0]["inmail"] == {SENT: 3}
    # a state written before rollups existed still loads, with none open
    legacy = state.to_json()
    del legacy["rollups"]
    assert OwnerState.from_json(legacy).rollups.open == {"hour": {}, "day": {}}


def test_the_window_record_of_a_day_names_every_gauge_for_the_day() -> None:
    state = OwnerState(owner=0, window_size=60)
    state.apply(senders_partial(0, 1, DAY0 + 60, ["a"]))
    (day,) = [w for w in close_all(state, DAY0 + DAY) if w.resolution == "day"]
    samples = {name: value for name, labels, value in day.record()["samples"] if not labels}
    assert samples["messaging_daily_active_senders"] == 1
    assert samples["messaging_weekly_active_senders"] == 1
    assert samples["messaging_monthly_active_senders"] == 1
    assert samples["messaging_daily_window_end_timestamp_seconds"] == DAY0 + DAY
    assert encode({SENT: 1}) == {"|".join(SENT): 1}
