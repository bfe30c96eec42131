"""Request planning: sessions, IB's duration steps, resume points."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ibkr_flows.ib.historical import UnknownBarSizeError
from ibkr_flows.ingest.plan import Chunk, plan_chunks, resume_start


def test_one_request_per_session_skipping_the_holiday_and_the_weekend() -> None:
    chunks = plan_chunks(datetime(2024, 7, 1, tzinfo=UTC), datetime(2024, 7, 9, tzinfo=UTC), bar_size="1 min",
                         use_rth=True)
    assert [c.start.date().isoformat() for c in chunks] == ["2024-07-01", "2024-07-02", "2024-07-03",
                                                            "2024-07-05", "2024-07-08"]
    half_day = chunks[2]
    assert half_day.end == datetime(2024, 7, 3, 17, 0, tzinfo=UTC) and half_day.duration == "12600 S"
    assert all(c.end - c.start == timedelta(seconds=int(c.duration.split()[0])) for c in chunks)


def test_extended_hours_and_dst() -> None:
    winter = plan_chunks(datetime(2024, 1, 8, tzinfo=UTC), datetime(2024, 1, 9, 12, tzinfo=UTC),
                         bar_size="5 mins", use_rth=False)
    assert winter[0].start == datetime(2024, 1, 8, 9, 0, tzinfo=UTC)  # 04:00 New York in winter
    assert winter[0].end == datetime(2024, 1, 9, 1, 0, tzinfo=UTC)  # 20:00 New York
    summer = plan_chunks(datetime(2024, 7, 8, tzinfo=UTC), datetime(2024, 7, 9, tzinfo=UTC), bar_size="5 mins",
                         use_rth=True)
    assert summer[0].start == datetime(2024, 7, 8, 13, 30, tzinfo=UTC)


def test_small_bars_follow_ibs_duration_steps() -> None:
    chunks = plan_chunks(datetime(2024, 7, 8, 13, 30, tzinfo=UTC), datetime(2024, 7, 8, 20, tzinfo=UTC),
                         bar_size="1 secs", use_rth=True)
    assert len(chunks) == 13 and all(c.duration == "1800 S" for c in chunks)
    assert chunks[0].start == datetime(2024, 7, 8, 13, 30, tzinfo=UTC)
    assert chunks[-1].end == datetime(2024, 7, 8, 20, 0, tzinfo=UTC)


def test_window_clipping_mid_session() -> None:
    chunks = plan_chunks(datetime(2024, 7, 8, 15, 0, tzinfo=UTC), datetime(2024, 7, 8, 16, 0, tzinfo=UTC),
                         bar_size="1 min", use_rth=True)
    assert chunks == [Chunk(datetime(2024, 7, 8, 15, 0, tzinfo=UTC), datetime(2024, 7, 8, 16, 0, tzinfo=UTC),
                            "3600 S")]


def test_daily_bars_in_yearly_requests() -> None:
    chunks = plan_chunks(datetime(2021, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC), bar_size="1 day",
                         use_rth=True)
    assert [c.duration for c in chunks] == ["1 Y"] * 3
    assert chunks[0].start == datetime(2021, 1, 1, tzinfo=UTC) and chunks[-1].end == datetime(2024, 1, 1, tzinfo=UTC)


def test_empty_and_bad_ranges() -> None:
    now = datetime(2024, 7, 8, tzinfo=UTC)
    assert plan_chunks(now, now, bar_size="1 min", use_rth=True) == []
    assert plan_chunks(datetime(2024, 7, 6, tzinfo=UTC), datetime(2024, 7, 8, tzinfo=UTC), bar_size="1 min",
                       use_rth=True) == []  # a weekend
    with pytest.raises(UnknownBarSizeError, match="7 mins"):
        plan_chunks(now - timedelta(days=1), now, bar_size="7 mins", use_rth=True)


def test_resume_from_watermark_with_overlap_or_from_head() -> None:
    mark = datetime(2024, 7, 8, 19, 59, tzinfo=UTC)
    configured = datetime(2024, 1, 1, tzinfo=UTC)
    assert resume_start(mark, configured, None, bar_size="1 min") == datetime(2024, 7, 8, 19, 54, tzinfo=UTC)
    head = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)
    assert resume_start(None, configured, head, bar_size="1 min") == head
    assert resume_start(None, configured, None, bar_size="1 min") == configured
