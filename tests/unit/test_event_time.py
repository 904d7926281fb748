"""PromQL over the event-time history: the recording rules' expressions with their inputs
renamed, held over their resolution, filtered only where every input can be."""

from __future__ import annotations

import re

import pytest

from deploy import event_time
from streams import catalogue
from streams.history.assembly import EVENT_TIME_PREFIX, event_time_name

RULES = event_time.recording_rules()
COHORT_RULES = sorted(rule for rule in RULES if "_cohort_" in rule or "final_" in rule
                      or "provisional_" in rule)
DERIVED_RULES = sorted(set(RULES) - set(COHORT_RULES))
_HELD = re.compile(r"last_over_time\((messaging_eventtime_\w+)(\{[^}]*\})?\[(\w+)\]\)")


def _undo(expr: str) -> str:
    """The derived expression back over the live gauges: unwrapped, unfiltered, renamed."""
    def replace(match: re.Match[str]) -> str:
        name = match.group(1).replace(EVENT_TIME_PREFIX, "messaging_", 1)
        matchers = [m for m in (match.group(2) or "{}")[1:-1].split(", ")
                    if m and m not in event_time.FILTERS.values()]
        return name + (f"{{{', '.join(matchers)}}}" if matchers else "")

    return _HELD.sub(replace, expr)


@pytest.mark.parametrize("record", DERIVED_RULES)
def test_a_derived_rule_is_the_rule_over_the_history(record: str) -> None:
    derived = event_time.from_rule(record)
    assert _undo(derived) == RULES[record]
    assert "messaging_eventtime_" in derived
    assert not re.search(r"(?<![\w:])messaging_(?!eventtime_)", derived), derived
    for name, matchers, hold in _HELD.findall(derived):
        assert hold == event_time.HOLD[event_time.families()[name][0]], (name, hold)


@pytest.mark.parametrize("record", COHORT_RULES)
def test_cohort_rules_are_not_in_the_history(record: str) -> None:
    with pytest.raises(ValueError, match="not in the event-time history"):
        event_time.from_rule(record)


def test_the_history_families_are_the_window_gauges_written() -> None:
    families = event_time.families()
    assert families["messaging_eventtime_messages_sent"] == (
        "minute", frozenset({"platform", "channel", "sender_type", "content_type"}))
    assert families["messaging_eventtime_daily_messages_sent"][0] == "day"
    assert families["messaging_eventtime_hourly_reply_latency_seconds_bucket"] == (
        "hour", frozenset({"channel", "le"}))
    for name, _ in catalogue.TRAILING_ACTIVE:
        assert families[event_time_name(name)] == ("day", frozenset())
    # the timestamp says where a window ends; flagged senders are the risk stage's
    assert not [name for name in families
                if "window_end" in name or "flagged" in name or "cohort" in name]


def test_filters_only_where_every_input_carries_the_label() -> None:
    assert event_time.filters_of("sum(messaging_messages_sent)") == ("platform", "channel")
    assert event_time.filters_of(RULES["messaging:reply_rate:ratio"]) == ("channel",)
    assert event_time.filters_of(RULES["messaging:messages_sent:per_active_sender"]) == ()
    assert event_time.over_history('sum(messaging_messages_read{platform="web"})') == (
        'sum(last_over_time(messaging_eventtime_messages_read'
        '{platform="web", platform=~"$platform"}[1h]))')
    assert event_time.over_history('messaging_blocks{platform=~"$platform"}') == (
        'last_over_time(messaging_eventtime_blocks{platform=~"$platform"}[1h])')


def test_last_day_adds_up_the_windows_of_the_day() -> None:
    expr = event_time.over_history("sum(messaging_messages_sent)", function="sum_over_time",
                                   range_=event_time.LAST_DAY)
    assert expr == ('sum(sum_over_time(messaging_eventtime_messages_sent'
                    '{platform=~"$platform", channel=~"$channel"}[23h59m59s999ms]))')


def test_what_cannot_be_derived_says_so() -> None:
    for expr in ("messaging:reply_rate:ratio > 0", "sum(rate(messaging_blocks[5m]))",
                 "sum(messaging_flagged_senders)", "messaging_window_end_timestamp_seconds"):
        with pytest.raises(ValueError):
            event_time.over_history(expr)
