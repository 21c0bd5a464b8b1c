"""The monitor's figures from synthetic rows with known answers: nearest-rank median and 90th
percentile, the share within the deadline, open past it, ISO weeks, the ranking, and the
annual statistics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.monitor import charts
from services.monitor.annual import AnnualRows, AssessedItem, ReportRow, annual, as_text
from services.monitor.figures import (
    NoticedItem,
    by_hoster,
    by_week,
    distribution,
    figures,
    human_duration,
    iso_week,
    median,
    open_past_deadline,
    percentile,
)

H = 3600.0
DAY = 86400.0
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # Monday of 2026-W10


def item(
    n: int, hoster: str = "Hoster A", *, removed_after: float | None = None, noticed: datetime = T0,
    state: str | None = None, reported_before: float = 10 * H, country: str | None = "NL",
) -> NoticedItem:
    removed_at = None if removed_after is None else noticed + timedelta(seconds=removed_after)
    return NoticedItem(
        item_id=f"item-{n}", url=f"http://site.test/{n}.jpg", hoster=hoster, country=country,
        state=state or ("removed" if removed_after is not None else "notice_sent"),
        first_seen=noticed - timedelta(seconds=reported_before), first_notice=noticed, removed_at=removed_at,
    )


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([], 50, None),
        ([7.0], 50, 7.0),
        ([7.0], 90, 7.0),
        ([1, 2, 3, 4], 50, 2),  # even count: the lower middle value (rank ceil(2) = 2)
        ([4, 3, 2, 1], 50, 2),  # order of input does not matter
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 50, 5),
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90, 9),  # rank ceil(9.0) = 9
        ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 90, 10),  # rank ceil(9.9) = 10
        ([1, 2, 3, 4, 5], 90, 5),  # rank ceil(4.5) = 5
        ([1, 2, 3, 4, 5], 0, 1),
        ([1, 2, 3, 4, 5], 100, 5),
        ([15, 20, 35, 40, 50], 30, 20),  # the textbook example: rank ceil(1.5) = 2
    ],
)
def test_percentile_is_nearest_rank(values: list[float], p: float, expected: float | None) -> None:
    assert percentile(values, p) == expected


def test_median_is_the_50th_percentile_and_bad_p_is_refused() -> None:
    assert median([3, 1, 2]) == 2
    with pytest.raises(ValueError):
        percentile([1], 101)


ROWS = [
    item(1, removed_after=1 * H),
    item(2, removed_after=2 * H),
    item(3, removed_after=3 * H),
    item(4, removed_after=30 * H),  # late
    item(5, noticed=NOW - timedelta(hours=48)),  # still online, past the deadline
    item(6, noticed=NOW - timedelta(hours=1)),  # still online, inside its deadline: undecided
    item(7, state="closed_not_illegal"),  # reassessed: neither removed nor online
    item(8, state="removed"),  # removed without a removed event: no time, not counted
]


def test_figures_of_a_table_of_rows() -> None:
    f = figures(ROWS, NOW, DAY)
    assert f.notices == 8
    assert f.removals == 4
    assert f.still_online == 2
    assert f.open_past_deadline == 1
    assert f.removed_within_deadline == 3
    assert f.median_seconds == 2 * H  # of 1, 2, 3, 30 h: rank 2
    assert f.p90_seconds == 30 * H  # rank ceil(3.6) = 4
    assert f.median_from_report_seconds == 12 * H  # reported 10 h before the notice
    assert f.p90_from_report_seconds == 40 * H
    assert f.share_within_deadline == pytest.approx(3 / 5)  # 3 in time of 4 removed + 1 overdue
    assert f.public()["median_seconds"] == 7200


def test_deadline_boundary_and_nothing_decided() -> None:
    on_the_dot = figures([item(1, removed_after=DAY)], NOW, DAY)
    assert on_the_dot.removed_within_deadline == 1 and on_the_dot.share_within_deadline == 1.0
    just_late = figures([item(1, removed_after=DAY + 1)], NOW, DAY)
    assert just_late.share_within_deadline == 0.0
    fresh = figures([item(1, noticed=NOW - timedelta(hours=23))], NOW, DAY)
    assert fresh.still_online == 1 and fresh.open_past_deadline == 0 and fresh.share_within_deadline is None
    assert fresh.median_seconds is None and fresh.p90_seconds is None
    empty = figures([], NOW, DAY)
    assert empty.notices == 0 and empty.share_within_deadline is None
    # a shorter deadline turns the same rows late
    assert figures(ROWS, NOW, 1.5 * H).removed_within_deadline == 1


def test_removal_before_the_notice_counts_as_zero() -> None:
    f = figures([item(1, removed_after=-60)], NOW, DAY)
    assert f.median_seconds == 0.0


def test_weeks_are_iso_weeks_of_the_first_notice() -> None:
    assert iso_week(datetime(2026, 1, 4, 23, 59, tzinfo=UTC)) == "2026-W01"  # a Sunday
    assert iso_week(datetime(2026, 1, 5, 0, 0, tzinfo=UTC)) == "2026-W02"
    assert iso_week(datetime(2027, 1, 1, tzinfo=UTC)) == "2026-W53"
    assert iso_week(datetime(2024, 12, 30, tzinfo=UTC)) == "2025-W01"
    rows = [
        item(1, removed_after=1 * H, noticed=datetime(2026, 3, 2, tzinfo=UTC)),
        item(2, removed_after=5 * H, noticed=datetime(2026, 3, 8, 23, tzinfo=UTC)),
        item(3, removed_after=50 * H, noticed=datetime(2026, 3, 9, tzinfo=UTC)),
        item(4, removed_after=2 * H, noticed=datetime(2026, 2, 23, tzinfo=UTC)),
    ]
    weeks = by_week(rows, NOW, DAY)
    assert list(weeks) == ["2026-W09", "2026-W10", "2026-W11"]
    assert weeks["2026-W10"].notices == 2 and weeks["2026-W10"].median_seconds == 1 * H
    assert weeks["2026-W11"].share_within_deadline == 0.0


def test_ranking_is_slowest_first() -> None:
    rows = [
        item(1, "Fast B.V.", removed_after=1 * H),
        item(2, "Fast B.V.", removed_after=2 * H),
        item(3, "Slow Ltd", removed_after=40 * H),
        item(4, "Slow Ltd", removed_after=60 * H),
        item(5, "Middle GmbH", removed_after=10 * H, country="DE"),
        item(6, "Never Removes", noticed=NOW - timedelta(days=5)),
        item(7, "New Hoster", noticed=NOW - timedelta(hours=2)),
        item(8, "Slow Ltd", noticed=NOW - timedelta(days=3)),
    ]
    ranked = by_hoster(rows, NOW, DAY)
    assert [h.hoster for h in ranked] == ["Never Removes", "Slow Ltd", "Middle GmbH", "Fast B.V.", "New Hoster"]
    slow = ranked[1]
    assert slow.overall.median_seconds == 40 * H and slow.overall.open_past_deadline == 1
    assert ranked[2].countries == ("DE",)
    assert list(slow.weeks)  # per hoster, per week too


def test_ties_on_the_median_put_more_overdue_first_then_name() -> None:
    rows = [
        item(1, "b", removed_after=5 * H), item(2, "a", removed_after=5 * H),
        item(3, "c", removed_after=5 * H), item(4, "c", noticed=NOW - timedelta(days=2)),
    ]
    assert [h.hoster for h in by_hoster(rows, NOW, DAY)] == ["c", "a", "b"]


def test_open_cases_past_the_deadline_oldest_first() -> None:
    rows = [*ROWS, item(9, noticed=NOW - timedelta(days=4))]
    cases = open_past_deadline(rows, NOW, DAY)
    assert [c.item_id for c in cases] == ["item-9", "item-5"]
    assert cases[1].url == "http://site.test/5.jpg"
    assert cases[1].age_seconds == 48 * H and cases[1].overdue_seconds == 24 * H


def test_distribution_buckets() -> None:
    rows = [item(1, removed_after=H), item(2, removed_after=H + 1), item(3, removed_after=DAY),
            item(4, removed_after=8 * DAY), item(5)]
    assert distribution(rows) == {"≤ 1 h": 1, "1–6 h": 1, "6–24 h": 1, "1–3 d": 0, "3–7 d": 0, "> 7 d": 1}


def test_human_duration() -> None:
    assert human_duration(None) == "–"
    assert human_duration(90) == "2 min"
    assert human_duration(5400) == "1.5 h"
    assert human_duration(3 * DAY) == "3 d" and human_duration(DAY) == "24 h"


def test_chart_geometry() -> None:
    c = charts.columns([charts.Point("a", 1, "1"), charts.Point("b", 2, "2")], width=208, height=100)
    assert [b["h"] for b in c["bars"]] == [23.0, 46.0] and c["base"] == 64
    r = charts.rows([charts.Point("x", 10, "10"), charts.Point("y", 5, "5")], width=400, label_width=100)
    assert r["bars"][0]["w"] == 230 and r["bars"][1]["w"] == 115
    assert charts.columns([])["bars"] == []


def test_annual_statistics() -> None:
    def at(month: int, day: int = 1) -> datetime:
        return datetime(2026, month, day, 12, tzinfo=UTC)

    rows = AnnualRows(
        year=2026,
        reports=[ReportRow("web", at(1)), ReportRow("web", at(1, 31)), ReportRow("api", at(2)),
                 ReportRow("partner", at(12, 31))],
        items=[
            AssessedItem("NL", known=True, analyst_verdict=None),
            AssessedItem("nl", known=True, analyst_verdict=None),
            AssessedItem("DE", known=False, analyst_verdict="illegal"),
            AssessedItem(None, known=False, analyst_verdict="illegal"),
            AssessedItem("NL", known=False, analyst_verdict="not_illegal"),
            AssessedItem("NL", known=False, analyst_verdict=None),  # never decided
        ],
        forwards=["Partner DE", "Partner DE", "Partner FR"],
        escalations=[at(3), at(3, 15), at(7)],
        noticed=[item(1, removed_after=2 * H), item(2, removed_after=30 * H)],
    )
    s = annual(rows, NOW, DAY)
    assert s["reports"]["total"] == 4
    assert s["reports"]["per_channel"]["web"]["per_month"][:2] == [2, 0]
    assert s["reports"]["per_channel"]["partner"]["per_month"][11] == 1
    assert s["reports"]["per_month"] == [2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert s["items"] == {"reported": 6, "decided": 5, "illegal": 4, "not_illegal": 1,
                          "share_illegal": 0.8, "analyst_assessed": 3}
    assert s["illegal_new_vs_known"] == {"known": 2, "new": 2}
    assert s["hosting_countries"] == {"NL": 2, "DE": 1, "unknown": 1}
    assert s["forwards_per_partner"] == {"Partner DE": 2, "Partner FR": 1}
    assert s["police_escalations"]["total"] == 3 and s["police_escalations"]["per_month"][2] == 2
    t = s["time_to_removal"]
    assert t["removals"] == 2 and t["median_seconds"] == 7200 and t["share_within_deadline"] == 0.5
    text = as_text(s)
    assert "Annual statistics 2026" in text and "80 %" in text and "Partner DE 2" in text
    assert "http" not in text
