"""The demo's terminal view reads a scrape into numbers: the daily row, the windows."""

from __future__ import annotations

import math

from rich.console import Console

from streams.console.live_view import LiveView, snapshot

SCRAPE = """\
# TYPE messaging_daily_active_senders gauge
messaging_daily_active_senders 3000
# TYPE messaging_weekly_active_senders gauge
messaging_weekly_active_senders 9000
# TYPE messaging_monthly_active_senders gauge
messaging_monthly_active_senders 20000
# TYPE messaging_daily_messages_sent gauge
messaging_daily_messages_sent{platform="web",channel="connection",sender_type="member",content_type="text"} 40000
messaging_daily_messages_sent{platform="ios",channel="inmail",sender_type="recruiter",content_type="text"} 10000
# TYPE messaging_daily_conversations_started gauge
messaging_daily_conversations_started{platform="web",channel="connection",entry_point="inbox"} 15000
# TYPE messaging_daily_spam_reports gauge
messaging_daily_spam_reports{channel="connection",reason="spam"} 250
# TYPE messaging_daily_window_end_timestamp_seconds gauge
messaging_daily_window_end_timestamp_seconds 1.7900352e+09
# TYPE messaging_final_cohort_conversations gauge
messaging_final_cohort_conversations{resolution="day",horizon="24h",channel="connection"} 9000
messaging_final_cohort_conversations{resolution="day",horizon="1h",channel="connection"} 9000
messaging_final_cohort_conversations{resolution="hour",horizon="24h",channel="connection"} 400
# TYPE messaging_final_cohort_first_replies gauge
messaging_final_cohort_first_replies{resolution="day",horizon="24h",channel="connection"} 4500
messaging_final_cohort_first_replies{resolution="day",horizon="1h",channel="connection"} 900
# TYPE messaging_final_inmail_cohort_sent gauge
messaging_final_inmail_cohort_sent{sender_type="recruiter"} 800
messaging_final_inmail_cohort_sent{sender_type="premium"} 100
# TYPE messaging_final_inmail_cohort_responses gauge
messaging_final_inmail_cohort_responses{sender_type="recruiter",response="replied"} 120
messaging_final_inmail_cohort_responses{sender_type="recruiter",response="declined"} 240
messaging_final_inmail_cohort_responses{sender_type="premium",response="replied"} 50
# TYPE messaging_messages_sent gauge
messaging_messages_sent{platform="web",channel="connection",sender_type="member",content_type="text"} 700
# TYPE messaging_window_end_timestamp_seconds gauge
messaging_window_end_timestamp_seconds 1.79e+09
"""


def test_the_daily_row_reads_the_last_day_and_the_final_cohorts() -> None:
    snap = snapshot(SCRAPE)
    day = snap.day
    assert (day.active, day.weekly, day.monthly) == (3000, 9000, 20000)
    assert day.stickiness == 0.15
    assert (day.messages, day.conversations) == (50000, 15000)
    assert day.response_24h == (0.5, True)  # the day cohort, final for 24 h
    assert day.inmail_response == (0.45, True)  # recruiters only: 360 / 800
    assert snap.messages == 700 and snap.window_end == 1.79e9
    view = LiveView()
    view.update(snap, now=1.0)
    console = Console(width=200, record=True)
    console.print(view.render())
    text = console.export_text()
    assert "Product (daily)" in text and "15.0%" in text and "45.0%" in text


def test_before_any_day_closed_the_daily_row_is_empty() -> None:
    snap = snapshot("# TYPE messaging_messages_sent gauge\n")
    assert snap.day.end is None and math.isnan(snap.day.stickiness)


def test_without_a_final_the_row_shows_yesterday_so_far() -> None:
    snap = snapshot("""\
# TYPE messaging_provisional_inmail_cohort_sent gauge
messaging_provisional_inmail_cohort_sent{sender_type="recruiter"} 200
# TYPE messaging_provisional_inmail_cohort_responses gauge
messaging_provisional_inmail_cohort_responses{sender_type="recruiter",response="accepted"} 50
""")
    assert snap.day.inmail_response == (0.25, False)
