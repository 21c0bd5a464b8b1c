"""The HashCheck API over real HTTP: uvicorn on loopback, a real database, a bank of hashes
of synthetic pictures (plus random ones), and the tokens of real accounts."""

from __future__ import annotations

import io
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from doubles.loopback import free_port
from entrypoints.bootstrap import System, bootstrap
from hashing.image import ImageHashes, hash_image
from hashing.synthetic import generate_photo_like
from hotline.config import Settings
from hotline.storage.models import BusMessage
from hotline.storage.unit_of_work import SqlUnitOfWork
from services.bank.bank import retire
from services.hashcheck.logic import iso_week

SOURCE = "secret-source-7f3a"
CATEGORY = "national"


def png_hashes(seed: int, size: tuple[int, int] = (256, 192)) -> ImageHashes:
    buf = io.BytesIO()
    generate_photo_like(*size, seed=seed).save(buf, "PNG")
    return hash_image(buf.getvalue())


def resized_jpeg_hashes(seed: int) -> ImageHashes:
    """The same picture re-uploaded at half size as JPEG: new crypto hashes, PDQ nearby."""
    buf = io.BytesIO()
    generate_photo_like(256, 192, seed=seed).resize((128, 96)).convert("RGB").save(
        buf, "JPEG", quality=80
    )
    return hash_image(buf.getvalue())


@dataclass
class App:
    system: System
    base: str
    tokens: dict[str, str]
    known: list[ImageHashes]
    entry_ids: list[int]
    server: Any = None
    thread: threading.Thread | None = None
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, who: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        c = httpx.Client(base_url=self.base, headers=headers, timeout=30)
        self.clients.append(c)
        return c

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.server.should_exit = True
        assert self.thread is not None
        self.thread.join(10)
        self.system.engine.dispose()


def start_app(database_url: str, seeds: range = range(1, 7), random_entries: int = 2000) -> App:
    import uvicorn

    from entrypoints.web import create_app

    # The hosting file vouches for the test's host names (intake refuses names that are not
    # under a public suffix otherwise: services/ingest/hosts.py).
    hosting = Path(tempfile.mkdtemp(prefix="hashcheck-")) / "hosting.yaml"
    hosting.write_text("hosts:\n  files.hoster-a.test: [127.0.0.2]\n")
    system = bootstrap(Settings(database_url=database_url, index_dir="none", hosting_file=hosting,
                                hashcheck_trusted="hoster-a,admin"))
    tokens = {}
    known = [png_hashes(s) for s in seeds]
    entry_ids = []
    with system.sessions() as session:
        store = SqlUnitOfWork(session)
        for name, role in [("hoster-a", "hoster"), ("hoster-b", "hoster"), ("hoster-c", "hoster"),
                           ("analyst", "analyst"), ("admin", "admin")]:
            tokens[name] = f"tok-{name}-{uuid.uuid4().hex}"
            store.users.add(name, role, tokens[name])
        for h in known:
            e = store.bank.add(category=CATEGORY, source=SOURCE, md5=h.md5, sha1=h.sha1,
                                     sha256=h.sha256, pdq=h.pdq, phash=h.phash)
            entry_ids.append(e.id)
        for _ in range(random_entries):
            store.bank.add(category="baseline", source=SOURCE, md5=os.urandom(16).hex(),
                                 sha256=os.urandom(32).hex(), pdq=os.urandom(32).hex())
        store.commit()
    system.bank.refresh(force=True)
    port = free_port("127.0.0.1")
    server = uvicorn.Server(uvicorn.Config(create_app(system), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "the web app did not start"
        time.sleep(0.02)
    return App(system, f"http://127.0.0.1:{port}", tokens, known, entry_ids, server, thread)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    db = tmp_path_factory.mktemp("hashcheck") / "hotline.db"
    a = start_app(f"sqlite:///{db}")
    yield a
    a.stop()


def check(client: httpx.Client, hashes: list[tuple[str, Any]], **extra: Any) -> httpx.Response:
    return client.post("/api/v1/hashcheck",
                       json={"hashes": [{"type": t, "value": v} for t, v in hashes], **extra})


# ------------------------------------------------------------------ authentication


def test_no_token_is_401(app: App) -> None:
    r = check(app.client(None), [("md5", app.known[0].md5)])
    assert r.status_code == 401
    assert "Bearer" in r.json()["detail"]


def test_unknown_token_is_401(app: App) -> None:
    c = httpx.Client(base_url=app.base, headers={"Authorization": "Bearer nope"})
    with c:
        assert check(c, [("md5", app.known[0].md5)]).status_code == 401


def test_wrong_role_is_403(app: App) -> None:
    r = check(app.client("analyst"), [("md5", app.known[0].md5)])
    assert r.status_code == 403
    assert "hoster" in r.json()["detail"]


def test_admin_may_call(app: App) -> None:
    r = check(app.client("admin"), [("md5", app.known[0].md5)])
    assert r.status_code == 200 and r.json()["results"][0]["known"] is True


# ------------------------------------------------------------------ answers


def test_known_unknown_and_near(app: App) -> None:
    h1, h2 = app.known[0], app.known[1]
    resized = resized_jpeg_hashes(seed=1)
    stranger = png_hashes(seed=999)
    assert resized.md5 != h1.md5
    queries = [
        ("md5", h1.md5), ("sha1", h1.sha1), ("sha256", h2.sha256.upper()), ("pdq", h1.pdq),
        ("phash", h2.phash),
        ("md5", resized.md5),            # re-encoded: bytes differ, so unknown
        ("pdq", resized.pdq),            # ... but the picture is near a known one
        ("md5", stranger.md5), ("pdq", stranger.pdq), ("sha1", os.urandom(20).hex()),
    ]
    r = check(app.client("hoster-a"), queries)
    assert r.status_code == 200, r.text
    body = r.json()
    res = body["results"]
    assert [x["type"] for x in res] == [t for t, _ in queries]
    assert [x["value"] for x in res] == [str(v).lower() for _, v in queries]
    assert [x["known"] for x in res] == [True] * 5 + [False, True, False, False, False]
    assert [x["distance"] for x in res[:5]] == [0, 0, 0, 0, 0]
    near = res[6]["distance"]
    assert isinstance(near, int) and 0 < near <= 31, near
    assert all(x["distance"] is None for x in res if not x["known"])
    assert body["checked"] == 10 and body["known"] == 6 and body["reports"] == []


def test_retired_entries_are_no_longer_known(app: App) -> None:
    h = app.known[5]
    c = app.client("hoster-c")
    assert [x["known"] for x in check(c, [("md5", h.md5), ("pdq", h.pdq)]).json()["results"]] == [True, True]
    with app.system.sessions() as session:
        store = SqlUnitOfWork(session)
        assert retire(store, app.entry_ids[5], "test: wrongly added", "tester")
        store.commit()
    app.system.bank.forget([app.entry_ids[5]])
    assert [x["known"] for x in check(c, [("md5", h.md5), ("pdq", h.pdq)]).json()["results"]] == [False, False]


def test_answer_reveals_nothing_about_the_bank(app: App) -> None:
    h = app.known[2]
    r = check(app.client("hoster-a"), [("md5", h.md5), ("pdq", h.pdq)])
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"checked", "known", "results", "reports"}
    for x in body["results"]:
        assert set(x) == {"type", "value", "known", "distance"}
    text = r.text
    for secret in (SOURCE, CATEGORY, "baseline", "category", "source", "entry"):
        assert secret not in text


def test_pdq_radius_cannot_be_widened(app: App) -> None:
    r = check(app.client("hoster-a"), [("pdq", app.known[0].pdq)], pdq_radius=128)
    assert r.status_code == 422
    assert "radius is fixed" in r.json()["detail"][0]["reason"]


# ------------------------------------------------------------------ limits and errors


def test_batch_of_10001_is_refused_with_the_limit(app: App) -> None:
    hashes = [("md5", os.urandom(16).hex()) for _ in range(10_001)]
    r = check(app.client("hoster-a"), hashes)
    assert r.status_code == 413
    detail = r.json()["detail"][0]
    assert detail["field"] == "hashes" and "10000" in detail["reason"] and "10001" in detail["reason"]


def test_batch_of_10000_is_answered(app: App) -> None:
    hashes = [("md5", os.urandom(16).hex()) for _ in range(9_999)] + [("md5", app.known[3].md5)]
    r = check(app.client("hoster-c"), hashes)
    assert r.status_code == 200
    body = r.json()
    assert body["checked"] == 10_000 and body["known"] == 1 and body["results"][-1]["known"]


def test_empty_batch_is_422(app: App) -> None:
    r = check(app.client("hoster-a"), [])
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "hashes" and "empty" in r.json()["detail"][0]["reason"]


def test_invalid_hashes_name_position_and_reason(app: App) -> None:
    good = app.known[0].md5
    r = check(app.client("hoster-a"), [("md5", good), ("md5", good[:-1]), ("pdq", "z" * 64),
                                       ("crc32", "abcd"), ("md5", good)])
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail == [
        {"field": "hashes[1].value", "reason": "md5 hash must be 32 hex characters (128 bits), got 31"},
        {"field": "hashes[2].value", "reason": "pdq hash must contain only hex digits 0-9a-f, found 'z'"},
        {"field": "hashes[3].type", "reason": detail[2]["reason"]},
    ]
    assert "unknown hash type 'crc32'" in detail[2]["reason"]


def test_not_json_and_wrong_shape(app: App) -> None:
    c = app.client("hoster-a")
    r = c.post("/api/v1/hashcheck", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"][0]["reason"]
    r = c.post("/api/v1/hashcheck", json={"md5": [app.known[0].md5]})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "md5"
    r = c.post("/api/v1/hashcheck", json={"hashes": [app.known[0].md5]})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "hashes[0]"


# ------------------------------------------------------------------ hits reported to the pipeline


def test_report_hits_opens_a_report_for_known_hashes_only(app: App) -> None:
    h = app.known[4]
    unknown = os.urandom(16).hex()
    url_known = "http://files.hoster-a.test/u/123/known.jpg"
    r = check(app.client("hoster-a"), [("md5", h.md5), ("md5", unknown)],
              report_hits={h.md5: url_known, unknown: "http://files.hoster-a.test/u/1/other.jpg"})
    assert r.status_code == 200, r.text
    reports = r.json()["reports"]
    assert len(reports) == 1 and reports[0]["urls"] == 1
    status = httpx.get(app.base + reports[0]["status_url"]).json()
    assert status["report_id"] == reports[0]["report_id"]
    # The report went into the pipeline like any API report: a reports.submitted message
    # naming only the URL of the known file.
    with app.system.sessions() as s:
        values = s.scalars(sa.select(BusMessage.value).where(BusMessage.topic == "reports.submitted"))
        submitted = [v for v in values if reports[0]["report_id"] in v]
    assert len(submitted) == 1 and url_known in submitted[0] and "other.jpg" not in submitted[0]
    assert '"channel":"api"' in submitted[0].replace(" ", "")
    # ... and ingest turns it into an item the hotline follows up.
    from hotline.runtime.embedded import EmbeddedRuntime

    admin = app.client("admin")
    with EmbeddedRuntime(app.system.sessions, app.system.build_stages(("ingest",))):
        deadline = time.monotonic() + 20
        while True:
            items = admin.get(reports[0]["status_url"]).json()["items"]
            if items or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert [(i["url"], i["state"]) for i in items] == [(url_known, "received")]


def test_report_hits_with_a_bad_url_or_foreign_hash_is_422(app: App) -> None:
    h = app.known[0]
    c = app.client("hoster-a")
    r = check(c, [("md5", h.md5)], report_hits={h.md5: "ftp://x.test/a.jpg"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == f"report_hits[{h.md5!r}]"
    # A host that cannot be on the internet is refused here, not silently at ingest.
    r = check(c, [("md5", h.md5)], report_hits={h.md5: "http://nas/share/a.jpg"})
    assert r.status_code == 422 and "cannot be on the internet" in r.json()["detail"][0]["reason"]
    r = check(c, [("md5", h.md5)], report_hits={"0" * 32: "http://x.test/a.jpg"})
    assert r.status_code == 422 and "not in this request" in r.json()["detail"][0]["reason"]


# ------------------------------------------------------------------ statistics and monitor


def stats_scenario(app: App) -> None:
    """hoster-a and hoster-b check batches; each sees its own counts, an admin sees both."""
    a, b = app.client("hoster-a"), app.client("hoster-b")
    before = {r["hoster"]: r for r in app.client("admin").get("/api/v1/hashcheck/stats").json()["stats"]}
    week = iso_week(datetime.now(UTC))
    k = app.known
    assert check(a, [("md5", k[0].md5), ("md5", os.urandom(16).hex()), ("pdq", k[1].pdq)]).status_code == 200
    assert check(a, [("sha1", k[2].sha1)]).status_code == 200
    assert check(b, [("md5", os.urandom(16).hex())] * 5).status_code == 200
    assert check(b, [("md5", "bad")]).status_code == 422  # refused requests are not counted

    def counts(rows: list[dict[str, Any]], hoster: str) -> tuple[int, int]:
        row = next((r for r in rows if r["hoster"] == hoster and r["week"] == week), None)
        return (row["checks"], row["hits"]) if row else (0, 0)

    def base(hoster: str) -> tuple[int, int]:
        row = before.get(hoster)
        return (row["checks"], row["hits"]) if row and row["week"] == week else (0, 0)

    own_a = a.get("/api/v1/hashcheck/stats").json()["stats"]
    assert {r["hoster"] for r in own_a} == {"hoster-a"}
    assert counts(own_a, "hoster-a") == (base("hoster-a")[0] + 4, base("hoster-a")[1] + 3)
    own_b = b.get("/api/v1/hashcheck/stats").json()["stats"]
    assert {r["hoster"] for r in own_b} == {"hoster-b"}
    assert counts(own_b, "hoster-b") == (base("hoster-b")[0] + 5, base("hoster-b")[1])
    everyone = app.client("admin").get("/api/v1/hashcheck/stats").json()["stats"]
    assert {"hoster-a", "hoster-b"} <= {r["hoster"] for r in everyone}
    assert all(r["week"] == week for r in everyone)
    assert app.client("analyst").get("/api/v1/hashcheck/stats").status_code == 403


def test_stats_per_hoster_per_week(app: App) -> None:
    stats_scenario(app)


def test_monitor_needs_admin_and_draws_the_chart(app: App) -> None:
    check(app.client("hoster-b"), [("md5", app.known[0].md5)])
    assert httpx.get(app.base + "/monitor/hashcheck").status_code == 401
    assert app.client("hoster-a").get("/monitor/hashcheck").status_code == 403
    assert app.client("analyst").get("/monitor/hashcheck").status_code == 403
    r = app.client("admin").get("/monitor/hashcheck")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "<svg" in html and "<rect" in html and iso_week(datetime.now(UTC)) in html
    assert "hoster-b" in html and "<script" not in html and "http://" not in html.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    # The cookie works for a browser as well as the header.
    cookie = httpx.get(app.base + "/monitor/hashcheck", cookies={"hotline_token": app.tokens["admin"]})
    assert cookie.status_code == 200 and "<svg" in cookie.text


def test_openapi_documents_the_request_shape(app: App) -> None:
    spec = httpx.get(app.base + "/openapi.json").json()
    op = spec["paths"]["/api/v1/hashcheck"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert "hashes" in schema["properties"] and "report_hits" in schema["properties"]
    assert "10,000" in op["description"]


# ------------------------------------------------------------------ PostgreSQL


@pytest.fixture
def pg_app(pg_url: str) -> Iterator[App]:
    """The app on a fresh PostgreSQL database of its own (created and dropped here)."""
    url = sa.engine.make_url(pg_url)
    name = f"hotline_hc_{uuid.uuid4().hex[:12]}"
    admin_engine = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    a = start_app(url.set(database=name).render_as_string(hide_password=False),
                  seeds=range(1, 4), random_entries=200)
    try:
        yield a
    finally:
        a.stop()
        with admin_engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin_engine.dispose()


@pytest.mark.integration
def test_stats_per_hoster_per_week_postgresql(pg_app: App) -> None:
    stats_scenario(pg_app)
    # Concurrent requests of one hoster must not lose increments (one atomic upsert each).
    week = iso_week(datetime.now(UTC))
    c = pg_app.client("hoster-c")
    threads = [threading.Thread(target=lambda: check(c, [("md5", pg_app.known[0].md5)] * 3))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = c.get("/api/v1/hashcheck/stats").json()["stats"]
    assert [(r["week"], r["checks"], r["hits"]) for r in rows] == [(week, 24, 24)]



# ------------------------------------------------------------------ parsing (no HTTP needed)


def test_bulk_and_per_hash_parsing_agree() -> None:
    """The bulk path and the one-hash-at-a-time path accept and normalise the same input."""
    from services.hashcheck.logic import BatchRejected, _parse_each, parse_batch

    md5 = "11accac1ac1507aefbfdf0948c9fbf39"
    pdq = "3d0593eaecb905c23a1468b66b957d760ad4ec2045b1ef8788c5d52b8c5b3e6d"
    clean = [{"type": "md5", "value": md5.upper()}, {"type": "pdq", "value": pdq},
             {"type": "md5", "value": md5}]
    bulk = parse_batch({"hashes": clean})
    each = _parse_each(clean)
    assert bulk.codes and bulk.values == each.values == {"md5": [md5, md5], "pdq": [pdq]}
    assert bulk.positions == each.positions == {"md5": [0, 2], "pdq": [1]}
    # Spellings only the per-hash path takes: upper-case type names, blanks around values.
    odd = parse_batch({"hashes": [{"type": " MD5", "value": f" {md5} "}, {"type": "pdq", "value": pdq}]})
    assert odd.values == {"md5": [md5], "pdq": [pdq]} and not odd.codes
    for bad, where in [
        ({"type": "md5", "value": 12}, "hashes[1].value"),
        (["md5", md5], "hashes[1]"),
        ({"type": ["md5"], "value": md5}, "hashes[1].type"),
        ({"type": "md5", "value": md5, "category": "x"}, "hashes[1].category"),
        ({"type": "md5"}, "hashes[1].value"),
    ]:
        with pytest.raises(BatchRejected) as err:
            parse_batch({"hashes": [clean[0], bad]})
        assert err.value.status == 422 and err.value.errors[0]["field"] == where, err.value.errors
