"""The monitor and the annual statistics from a real database: SQLite (and PostgreSQL, when
running) built by the real migrations, items, notices and timelines written through ``SqlUnitOfWork``'s repositories along
the allowed transitions with a controlled clock, then read back over HTTP (TestClient on the
assembled app) and through ``hotline stats`` (click's CliRunner)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from entrypoints.bootstrap import System, bootstrap
from entrypoints.cli import main
from entrypoints.web import create_app
from hotline.config import Settings, get_settings
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import new_token
from schemas.reports import ReportSubmitted
from tests.integration import scenario

pytestmark = pytest.mark.integration

H = timedelta(hours=1)
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # Monday, ISO week 2026-W10


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        return self.t


@dataclass
class World:
    system: System
    client: TestClient
    tokens: dict[str, str]
    urls: list[str]
    item_ids: list[str]
    database_url: str


def _noticed(
    uow: SqlUnitOfWork, clock: Clock, url: str, hoster: str, noticed: datetime, removed: datetime | None = None,
    *, reported_before: timedelta = 2 * H, country: str = "NL",
) -> str:
    clock.t = noticed - reported_before
    item = uow.items.create(url)
    item.hoster, item.country = hoster, country
    item.classification = {"known": True, "item_id": item.id, "url": url}
    uow.items.set_state(item, "notice_queued", "known material hosted at home", "classify")
    clock.t = noticed
    notice = uow.notices.reserve(f"notice-{item.id}", item.id, hoster, f"abuse@{hoster.split()[0].lower()}.test",
                                 f"<{item.id}@hotline.test>")
    notice.status, notice.sent_at = "sent", noticed
    uow.items.set_state(item, "notice_sent", f"notice sent to {hoster}", "notify")
    if removed is not None:
        clock.t = removed
        uow.items.set_state(item, "removed", f"gone after {removed - noticed}", "recheck")
    uow.flush()
    return item.id


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite built by the migrations; the same on PostgreSQL when it is running."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'monitor.db'}"
        return
    pg_url: str = request.getfixturevalue("pg_url")
    with scenario.fresh_pg_database(pg_url, "mon") as url:
        yield url


@pytest.fixture
def world(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    clock = Clock()
    monkeypatch.setattr("hotline.storage.items.now", clock)
    monkeypatch.setattr("hotline.storage.actions.now", clock)
    monkeypatch.setattr("services.monitor.routes.now", lambda: NOW)
    system = bootstrap(Settings(database_url=database_url, index_dir="none", hotline_name="Hotline (monitor)"))
    tokens = {role: new_token() for role in ("analyst", "admin", "hoster")}
    urls: list[str] = []
    ids: list[str] = []

    def add(hoster: str, noticed: datetime, removed: datetime | None = None, **kw: object) -> None:
        url = f"http://images.{hoster.split()[0].lower()}.test/p/{len(urls)}.jpg"
        urls.append(url)
        ids.append(_noticed(uow, clock, url, hoster, noticed, removed, **kw))  # type: ignore[arg-type]

    with system.sessions() as session:
        uow = SqlUnitOfWork(session)
        for role, token in tokens.items():
            uow.users.add(f"monitor-{role}", role, token)
        # Slow: 30 h and 50 h, and one still online for 3 days (past the deadline).
        add("Slow Hosting Ltd", T0, T0 + 30 * H)
        add("Slow Hosting Ltd", T0 + 24 * H, T0 + 74 * H)
        add("Slow Hosting Ltd", NOW - 72 * H)
        # Quick: 1 h and 3 h (next ISO week), and one inside its deadline (undecided).
        add("Quick Host B.V.", T0, T0 + 1 * H)
        add("Quick Host B.V.", T0 + 7 * 24 * H, T0 + 7 * 24 * H + 3 * H)
        add("Quick Host B.V.", NOW - 2 * H)
        # Medium, abroad: 10 h.
        add("Medium GmbH", T0, T0 + 10 * H, country="DE")
        # A reminder to another party later does not change whose item it is or when it started.
        uow.notices.reserve("reminder-0", ids[0], "Upstream Transit", "abuse@upstream.test", "<r0>").status = "sent"
        uow.notices.get("reminder-0").sent_at = T0 + 25 * H  # type: ignore[union-attr]
        # A refused notice is no notice: that item stays out of the monitor.
        clock.t = T0
        refused = uow.items.create("http://images.refuser.test/x.jpg")
        uow.items.set_state(refused, "notice_queued", "known", "classify")
        uow.notices.reserve("refused-1", refused.id, "Refuser Inc", "abuse@refuser.test", "<x>").status = "refused"
        # For the annual statistics: reports, an assessment, a forward, an escalation.
        for channel, month in (("web", 1), ("web", 3), ("api", 3), ("partner", 2)):
            uow.reports.create(ReportSubmitted(channel=channel, urls=["http://x.test/"],
                                               submitted_at=datetime(2026, month, 5, tzinfo=UTC)))
        uow.reports.create(ReportSubmitted(channel="web", urls=["http://x.test/"],
                                           submitted_at=datetime(2025, 12, 31, 23, 59, tzinfo=UTC)))
        clock.t = T0
        new = uow.items.create("http://images.slow.test/new.jpg")
        new.country = "NL"
        uow.items.set_state(new, "awaiting_assessment", "unknown material", "classify")
        uow.assessments.add(new.id, "monitor-analyst", "illegal", "national", "confirmed")
        uow.escalations.add("esc-1", new.id, {"item_id": new.id})
        fwd = uow.forwards.open("fwd-1", ids[-1], "DE", "Partner hotline DE")
        fwd.status, fwd.sent_at = "sent", T0 + H
        uow.commit()
    client = TestClient(create_app(system))
    try:
        yield World(system, client, tokens, urls, ids, database_url)
    finally:
        client.close()
        system.close()


def test_public_figures_per_hoster_slowest_first(world: World) -> None:
    r = world.client.get("/api/v1/monitor/hosters")
    assert r.status_code == 200
    data = r.json()
    assert data["deadline_seconds"] == 86400 and data["percentile_method"] == "nearest-rank"
    assert [h["hoster"] for h in data["hosters"]] == ["Slow Hosting Ltd", "Medium GmbH", "Quick Host B.V."]
    slow, medium, quick = data["hosters"]
    assert slow["rank"] == 1 and slow["countries"] == ["NL"]
    assert (slow["notices"], slow["removals"], slow["still_online"], slow["open_past_deadline"]) == (3, 2, 1, 1)
    assert slow["median_seconds"] == 30 * 3600 and slow["p90_seconds"] == 50 * 3600
    assert slow["median_from_report_seconds"] == 32 * 3600  # reported 2 h before the notice
    assert slow["removed_within_deadline"] == 0 and slow["share_within_deadline"] == 0.0
    assert medium["countries"] == ["DE"] and medium["median_seconds"] == 10 * 3600
    assert quick["median_seconds"] == 3600 and quick["p90_seconds"] == 3 * 3600
    assert quick["still_online"] == 1 and quick["open_past_deadline"] == 0
    assert quick["share_within_deadline"] == 1.0
    assert [w["week"] for w in quick["weeks"]] == ["2026-W10", "2026-W11", "2026-W12"]
    totals = data["totals"]
    assert (totals["notices"], totals["removals"], totals["open_past_deadline"]) == (7, 5, 1)
    assert totals["median_seconds"] == 10 * 3600  # of 1, 3, 10, 30, 50 h
    assert totals["share_within_deadline"] == pytest.approx(3 / 6)
    assert "Refuser Inc" not in r.text and "Upstream Transit" not in r.text


def test_public_output_never_names_a_url_or_item(world: World) -> None:
    year = NOW.year
    for path in ("/api/v1/monitor/hosters", "/api/v1/monitor/hosters?format=csv", "/api/v1/monitor/hosters.csv",
                 "/api/v1/monitor/hosters.csv?by=week", "/monitor", f"/stats/{year}", f"/api/v1/stats/{year}"):
        r = world.client.get(path)
        assert r.status_code == 200, path
        body = r.text
        for url in world.urls:
            assert url not in body, path
        for item_id in world.item_ids:
            assert item_id not in body and item_id[:8] not in body, path
        assert "images." not in body and ".jpg" not in body, path
        assert "http://" not in body.replace("http://www.w3.org/2000/svg", ""), path


def test_csv_export(world: World) -> None:
    r = world.client.get("/api/v1/monitor/hosters", params={"format": "csv"})
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["hoster"] for row in rows] == ["Slow Hosting Ltd", "Medium GmbH", "Quick Host B.V."]
    assert rows[0]["rank"] == "1" and rows[0]["median_seconds"] == str(30 * 3600)
    assert rows[2]["share_within_deadline"] == "1.0" and rows[1]["countries"] == "DE"
    assert world.client.get("/api/v1/monitor/hosters.csv").text == r.text
    weekly = list(csv.DictReader(io.StringIO(world.client.get("/api/v1/monitor/hosters.csv?by=week").text)))
    assert {(w["hoster"], w["week"]) for w in weekly} >= {("Quick Host B.V.", "2026-W11"), ("Slow Hosting Ltd", "2026-W10")}
    assert world.client.get("/api/v1/monitor/hosters?format=xml").status_code == 422


def test_monitor_page_has_ranking_and_charts(world: World) -> None:
    r = world.client.get("/monitor")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert page.index("Slow Hosting Ltd") < page.index("Medium GmbH") < page.index("Quick Host B.V.")
    for chart in ("chart-ranking", "chart-distribution", "chart-weekly-median", "chart-weekly-share"):
        assert f'id="{chart}"' in page
    assert page.count("<svg") == 4 and "<script" not in page
    assert "src=" not in page and "<link" not in page  # nothing loaded from anyone


def test_internal_variant_needs_an_analyst(world: World) -> None:
    c = world.client
    assert c.get("/api/v1/monitor/open").status_code == 401
    assert c.get("/monitor/internal").status_code == 401
    hoster = {"Authorization": f"Bearer {world.tokens['hoster']}"}
    assert c.get("/api/v1/monitor/open", headers=hoster).status_code == 403
    assert c.get("/monitor/internal", headers=hoster).status_code == 403
    for role in ("analyst", "admin"):
        r = c.get("/api/v1/monitor/open", headers={"Authorization": f"Bearer {world.tokens[role]}"})
        assert r.status_code == 200, role
        (case,) = r.json()["open"]
        assert case["item_id"] == world.item_ids[2] and case["url"] == world.urls[2]
        assert case["hoster"] == "Slow Hosting Ltd" and case["age_seconds"] == 72 * 3600
        assert case["overdue_seconds"] == 48 * 3600
    page = c.get("/monitor/internal", headers={"Cookie": f"hotline_token={world.tokens['analyst']}"})
    assert page.status_code == 200 and world.urls[2] in page.text and page.headers["cache-control"] == "no-store"
    csv_open = c.get("/api/v1/monitor/open?format=csv", headers={"Authorization": f"Bearer {world.tokens['analyst']}"})
    assert world.urls[2] in csv_open.text and csv_open.text.startswith("item_id,url,")


def test_annual_statistics_api_page_and_cli(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    stats = world.client.get("/api/v1/stats/2026").json()
    assert stats["reports"]["total"] == 4
    assert stats["reports"]["per_channel"]["web"]["per_month"][:3] == [1, 0, 1]
    assert stats["items"]["illegal"] == 8 and stats["items"]["share_illegal"] == 1.0
    assert stats["illegal_new_vs_known"] == {"known": 7, "new": 1}
    assert stats["hosting_countries"] == {"NL": 7, "DE": 1}
    assert stats["forwards_per_partner"] == {"Partner hotline DE": 1}
    assert stats["police_escalations"]["total"] == 1 and stats["police_escalations"]["per_month"][2] == 1
    assert stats["time_to_removal"]["removals"] == 5
    assert world.client.get("/api/v1/stats/2025").json()["reports"]["total"] == 1
    page = world.client.get("/stats/2026")
    assert page.status_code == 200 and "Annual statistics 2026" in page.text and 'id="chart-reports"' in page.text
    assert world.client.get("/stats/1999").status_code == 422

    monkeypatch.setenv("HOTLINE_DATABASE_URL", world.database_url)
    monkeypatch.setenv("HOTLINE_INDEX_DIR", "none")
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        done = runner.invoke(main, ["stats", "--year", "2026", "--format", "json"])
        assert done.exit_code == 0, done.output
        from_cli = json.loads(done.output)
        # Same figures as the API, apart from the open items' ages (the CLI's clock is real).
        assert from_cli["reports"] == stats["reports"] and from_cli["items"] == stats["items"]
        assert from_cli["time_to_removal"]["median_seconds"] == stats["time_to_removal"]["median_seconds"]
        text = runner.invoke(main, ["stats", "--year", "2026"])
        assert text.exit_code == 0 and "Annual statistics 2026" in text.output and "Partner hotline DE 1" in text.output
        assert runner.invoke(main, ["stats"]).exit_code != 0
    finally:
        get_settings.cache_clear()
