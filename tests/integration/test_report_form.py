"""The public form's abuse protection, languages and privacy over real HTTP on loopback:
uvicorn serving ``create_app``, SQLite in a temporary directory. No stage runs: what is
checked here is what intake records and answers, not what the pipeline does next."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from doubles.loopback import free_port, serve_app
from entrypoints.bootstrap import System, bootstrap
from entrypoints.demo import NoDns
from entrypoints.web import create_app
from hotline.config import Settings
from hotline.storage.models import AuditLog, Report
from hotline.storage.reporter_address import is_sealed, new_key
from services.ingest.ratelimit import RateLimiter

pytestmark = pytest.mark.integration

URL = "http://www.example.com/page"  # under a public suffix: intake accepts it; nothing fetches it here
ID = re.compile(r'id="report-id">([0-9a-f]{32})<')


@dataclass
class Web:
    client: httpx.Client
    system: System
    app: Any
    db: Path

    def report_ids(self) -> set[str]:
        with self.system.sessions() as s:
            return set(s.scalars(sa.select(Report.id)))


@pytest.fixture
def make_web(tmp_path: Path) -> Iterator[Callable[..., Web]]:
    stops: list[Callable[[], None]] = []

    def make(**settings: Any) -> Web:
        db = tmp_path / f"form-{len(stops)}.db"
        system = bootstrap(Settings(database_url=f"sqlite:///{db}", kafka_brokers=None, hosting_file=None,
                                    partners_file=None, hotline_name="Form Hotline", **settings), dns=NoDns())
        app = create_app(system)
        port = free_port()
        server, thread = serve_app(app, port)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False)

        def stop() -> None:
            client.close()
            server.should_exit = True
            thread.join(5)
            system.engine.dispose()

        stops.append(stop)
        return Web(client, system, app, db)

    yield make
    for stop in stops:
        stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- rate limit


def test_the_rate_limit_setting_applies_to_api_and_form(make_web: Callable[..., Web]) -> None:
    web = make_web(report_rate_per_minute=2)
    assert web.client.post("/api/v1/reports", json={"urls": [URL]}).status_code == 202
    assert web.client.post("/report", data={"urls": URL}).status_code == 200  # one bucket for both
    r = web.client.post("/api/v1/reports", json={"urls": [URL]})
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) == 30  # 2 a minute: one more in 30 s
    assert "too many reports" in r.json()["detail"]


def test_429_with_retry_after_then_the_bucket_refills(make_web: Callable[..., Web]) -> None:
    web = make_web(report_rate_per_minute=3)
    clock = FakeClock()
    web.app.state.report_limiter = RateLimiter(3, clock=clock)
    before = web.report_ids()
    for _ in range(3):
        assert web.client.post("/api/v1/reports", json={"urls": [URL]}).status_code == 202
    refused = web.client.post("/api/v1/reports", json={"urls": [URL]})
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "20"

    # The form says so in the page's language, with what was typed kept, and creates nothing.
    page = web.client.post("/report", data={"urls": URL, "description": "kept"},
                           headers={"Accept-Language": "nl-NL,nl;q=0.9"})
    assert page.status_code == 429 and page.headers["Retry-After"] == "20"
    assert '<html lang="nl">' in page.text and 'id="errors"' in page.text
    assert "Te veel meldingen" in page.text and "20 seconden" in page.text
    assert f"{URL}</textarea>" in page.text and "kept</textarea>" in page.text
    assert len(web.report_ids() - before) == 3

    clock.now += 19
    assert web.client.post("/api/v1/reports", json={"urls": [URL]}).status_code == 429
    clock.now += 1  # 20 s after the last token was taken: one token again, and only one
    assert web.client.post("/api/v1/reports", json={"urls": [URL]}).status_code == 202
    assert web.client.post("/api/v1/reports", json={"urls": [URL]}).status_code == 429
    clock.now += 60  # a full minute: the whole burst again
    assert [web.client.post("/report", data={"urls": URL}).status_code for _ in range(4)] == [200, 200, 200, 429]


# --------------------------------------------------------------------------- honeypot


def test_a_filled_honeypot_looks_like_success_and_creates_nothing(make_web: Callable[..., Web]) -> None:
    web = make_web(report_rate_per_minute=0)
    before = web.report_ids()
    r = web.client.post("/report", data={"urls": URL, "description": "buy now", "website": "http://spam.example/"})
    assert r.status_code == 200
    m = ID.search(r.text)
    assert m and "Thank you" in r.text
    assert web.report_ids() == before  # nothing recorded ...
    assert web.client.get(f"/api/v1/reports/{m.group(1)}").status_code == 404
    with web.system.sessions() as s:  # ... except, for the operators, that it happened
        audit = s.scalars(sa.select(AuditLog).where(AuditLog.action == "honeypot_filled")).all()
    assert len(audit) == 1 and audit[0].actor == "web"
    # A person's report (honeypot empty, as the browser sends it) goes through.
    ok = web.client.post("/report", data={"urls": URL, "website": ""})
    assert ok.status_code == 200 and (m2 := ID.search(ok.text)) and m2.group(1) in web.report_ids()


def test_the_honeypot_is_hidden_from_people_and_assistive_technology(make_web: Callable[..., Web]) -> None:
    page = make_web(report_rate_per_minute=0).client.get("/report").text
    trap = re.search(r'<div class="hp" aria-hidden="true">.*?</div>', page, re.S)
    assert trap, page
    assert 'name="website"' in trap.group(0) and 'tabindex="-1"' in trap.group(0)
    assert 'autocomplete="off"' in trap.group(0)


# --------------------------------------------------------------------------- languages


@pytest.mark.parametrize(
    ("accept", "lang"),
    [
        ("nl-NL,nl;q=0.9,en;q=0.8", "nl"),
        ("de-DE,de;q=0.9,nl;q=0.5,en;q=0.4", "nl"),
        ("en-GB,en;q=0.9,nl;q=0.8", "en"),
        ("en;q=0.3,nl-BE;q=0.7", "nl"),
        ("nl;q=0,en", "en"),
        ("fr-FR,fr", "en"),  # neither: the default
        (None, "en"),
    ],
)
def test_the_language_follows_accept_language(make_web: Callable[..., Web], accept: str | None, lang: str) -> None:
    web = make_web(report_rate_per_minute=0)
    r = web.client.get("/report", headers={"Accept-Language": accept} if accept else {})
    assert f'<html lang="{lang}">' in r.text and r.headers["Content-Language"] == lang
    assert "Accept-Language" in r.headers["Vary"]


def test_the_operator_can_make_dutch_the_default(make_web: Callable[..., Web]) -> None:
    web = make_web(report_rate_per_minute=0, form_default_language="nl")
    assert '<html lang="nl">' in web.client.get("/report", headers={"Accept-Language": "fr"}).text
    assert '<html lang="en">' in web.client.get("/report", headers={"Accept-Language": "en"}).text


def test_the_switch_wins_and_is_remembered(make_web: Callable[..., Web]) -> None:
    web = make_web(report_rate_per_minute=0)
    english = {"Accept-Language": "en"}
    r = web.client.get("/report?lang=nl", headers=english)
    assert '<html lang="nl">' in r.text and 'href="/report?lang=en"' in r.text
    assert "hotline_lang=nl" in r.headers["set-cookie"] and "samesite=lax" in r.headers["set-cookie"].lower()
    assert '<html lang="nl">' in web.client.get("/report", headers=english).text  # the cookie
    # The form's own hidden field keeps the page's language for the answer, cookie or not.
    web.client.cookies.clear()
    bad = web.client.post("/report", data={"urls": "http://intranet/x", "lang": "nl"}, headers=english)
    assert bad.status_code == 422 and '<html lang="nl">' in bad.text
    assert "http://intranet/x: de host intranet kan niet op internet staan" in bad.text
    thanks = web.client.post("/report", data={"urls": URL, "lang": "nl"}, headers=english)
    assert "Dank u wel" in thanks.text and '<html lang="nl">' in thanks.text


# --------------------------------------------------------------------------- the reporter's address


def _every_value(db: Path, engine: sa.Engine) -> str:
    """Every cell of every table, and the database files' raw bytes, as one text."""
    parts = []
    with engine.connect() as c:
        for table in sa.inspect(engine).get_table_names():
            for row in c.execute(sa.text(f'SELECT * FROM "{table}"')):
                parts.extend(str(v) for v in row)
    for f in db.parent.glob(db.name + "*"):  # the file, and -wal/-journal if there are any
        parts.append(f.read_bytes().decode("latin-1"))
    return "\n".join(parts).lower()


def test_the_reporter_address_is_never_in_the_database_in_clear(make_web: Callable[..., Web]) -> None:
    web = make_web(report_rate_per_minute=0, reporter_key=new_key())
    seal = web.system.reporter_seal()
    assert seal is not None
    api_addr, form_addr = "Reporter.Api@Mail-Example.test", "form.reporter@mail-example.test"
    r = web.client.post("/api/v1/reports", json={"urls": [URL], "reporter_email": api_addr})
    assert r.status_code == 202
    api_id = r.json()["report_id"]
    page = web.client.post("/report", data={"urls": URL, "reporter_email": form_addr})
    assert 'name="reporter_email"' in web.client.get("/report").text
    form_id = ID.search(page.text).group(1)  # type: ignore[union-attr]

    everything = _every_value(web.db, web.system.engine)
    for clear in (api_addr, form_addr, "mail-example", "reporter.api", "form.reporter"):
        assert clear.lower() not in everything, clear
    # The bus (outbox) rows were checked above too; the hotline itself can still read them.
    with web.system.sessions() as s:
        kept = {rid: s.get(Report, rid).reporter_email for rid in (api_id, form_id)}  # type: ignore[union-attr]
    assert all(is_sealed(v) for v in kept.values())
    assert seal.open(kept[api_id] or "") == api_addr and seal.open(kept[form_id] or "") == form_addr


def test_without_a_key_no_address_is_asked_for_or_kept(make_web: Callable[..., Web]) -> None:
    web = make_web(report_rate_per_minute=0)
    page = web.client.get("/report").text
    assert 'name="reporter_email"' not in page and 'id="anonymous-note"' in page
    r = web.client.post("/api/v1/reports", json={"urls": [URL], "reporter_email": "someone@mail-example.test"})
    assert r.status_code == 202
    form = web.client.post("/report", data={"urls": URL, "reporter_email": "other@mail-example.test"})
    assert form.status_code == 200
    with web.system.sessions() as s:
        assert s.get(Report, r.json()["report_id"]).reporter_email is None  # type: ignore[union-attr]
    assert "mail-example" not in _every_value(web.db, web.system.engine)


def test_an_address_too_long_to_keep_is_refused_clearly(make_web: Callable[..., Web]) -> None:
    web = make_web(report_rate_per_minute=0, reporter_key=new_key())
    long = "x" * 195 + "@a.test"
    r = web.client.post("/api/v1/reports", json={"urls": [URL], "reporter_email": long})
    assert r.status_code == 422 and "reporter_email" in r.text
    page = web.client.post("/report", data={"urls": URL, "reporter_email": long},
                           headers={"Accept-Language": "nl"})
    assert page.status_code == 422 and "het e-mailadres is langer dan 200 tekens" in page.text
    assert 'aria-describedby="reporter_email-hint reporter_email-error" aria-invalid="true"' in page.text


def test_seal_addresses_migrates_clear_addresses_of_older_databases(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTLINE_")}
    env.update(HOTLINE_DATABASE_URL=f"sqlite:///{db}", HOTLINE_INDEX_DIR=str(tmp_path / "index"))
    system = bootstrap(Settings(database_url=f"sqlite:///{db}", kafka_brokers=None, hosting_file=None,
                                partners_file=None), dns=NoDns())
    with system.sessions() as s:  # as a database from before sealing holds them
        s.add_all([Report(id="old-1", channel="web", reporter_email="old.one@mail-example.test"),
                   Report(id="old-2", channel="api", reporter_email=None)])
        s.commit()
    key = new_key()

    def cli(*args: str, **extra: str) -> str:
        done = subprocess.run([sys.executable, "-m", "entrypoints.cli", *args], env={**env, **extra},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "sealed 1, erased 0" in cli("reports", "seal-addresses", HOTLINE_REPORTER_KEY=key)
    assert "sealed 0, erased 0" in cli("reports", "seal-addresses", HOTLINE_REPORTER_KEY=key)  # idempotent
    assert "mail-example" not in _every_value(db, system.engine)
    with system.sessions() as s:
        sealed = s.get(Report, "old-1").reporter_email  # type: ignore[union-attr]
    keyed = bootstrap(Settings(database_url=f"sqlite:///{db}", kafka_brokers=None, hosting_file=None,
                               partners_file=None, reporter_key=key), dns=NoDns())
    assert keyed.reporter_seal().open(sealed or "") == "old.one@mail-example.test"  # type: ignore[union-attr]
    keyed.engine.dispose()
    system.engine.dispose()
    assert len(cli("reports", "new-reporter-key").strip()) == 44
