"""The HTTP contract, over real HTTP on loopback: uvicorn serving ``create_app`` in a thread,
SQLite in a temporary directory, the embedded stages running, and an httpx client.

The pipeline behind it is real too: classify fetches from a loopback site that plays a hoster
(allow_private_fetch, as in the demo), so items reach real states before they are assessed.
Notices go to a recording mailer; nothing leaves 127.0.0.0/8.
"""

from __future__ import annotations

import html
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from doubles.loopback import LoopbackSite, free_port
from entrypoints.bootstrap import System, bootstrap
from entrypoints.web import create_app
from hashing.synthetic import photo_like_jpeg
from hotline.config import Settings
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.storage.models import ReportUrl
from hotline.storage.reporter_address import new_key
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import new_token
from services.notify.mailer import RecordingMailer

COARSE_STATES = {"received", "in_progress", "action_taken", "closed", "rejected"}


class NoDns:
    def resolve(self, host: str) -> list[str]:
        raise OSError(f"{host}: no DNS in tests")


@dataclass
class Web:
    client: httpx.Client
    system: System
    site: str  # base URL of the loopback "hoster", by name
    tokens: dict[str, str]

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def report(self, *urls: str, **extra: Any) -> str:
        r = self.client.post("/api/v1/reports", json={"urls": list(urls), **extra})
        assert r.status_code == 202, r.text
        return str(r.json()["report_id"])

    def wait_item(self, report_id: str, until: set[str], timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        body: dict[str, Any] = {}
        while time.monotonic() < deadline:
            body = self.client.get(f"/api/v1/reports/{report_id}", headers=self.auth("admin")).json()
            if body["items"] and body["items"][0]["state"] in until:
                return body
            time.sleep(0.05)
        raise AssertionError(f"report {report_id} did not reach {until}: {body}")


def _serve(app: Any, port: int) -> tuple[Any, threading.Thread]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "the web app did not start"
        time.sleep(0.02)
    return server, thread


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    tmp: Path = tmp_path_factory.mktemp("web")
    site = LoopbackSite("127.0.0.2").start()
    for n in range(4):  # distinct pictures: an assessed one joins the bank and is "known" afterwards
        site.add(f"/new{n}.jpg", "image/jpeg", photo_like_jpeg(256, 192, seed=11 + n))
    hosting = tmp / "hosting.yaml"
    hosting.write_text(yaml.safe_dump({
        # Names the tests report besides the site: vouched for by the hosting file, so intake
        # accepts them (services/ingest/hosts.py); nothing listens at 127.0.0.9.
        "hosts": {"img.hoster-a.test": ["127.0.0.2"],
                  **{h: ["127.0.0.9"] for h in ("a.test", "ok.test", "idem.test", "race.test", "second.test")}},
        "networks": [{"range": "127.0.0.2/32", "country": "NL", "asn": 64501, "hoster": "Hoster A B.V.",
                      "abuse": "abuse@hoster-a.test"}],
    }))
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'hotline.db'}",
        kafka_brokers=None,
        hosting_file=hosting,
        partners_file=None,
        allow_private_fetch=True,
        hotline_name="Test Hotline",
        fetch_timeout_seconds=5,
        reporter_key=new_key(),
        report_rate_per_minute=0,  # these tests post far more than a person would; limits: test_report_form.py
    )
    system = bootstrap(settings, dns=NoDns(), mailer=RecordingMailer())
    tokens = {role: new_token() for role in ("admin", "analyst", "police", "hoster", "partner")}
    with system.sessions() as session:
        store = SqlUnitOfWork(session)
        for role, token in tokens.items():
            store.users.add(f"test-{role}", role, token)
        store.commit()
    runtime = EmbeddedRuntime(system.sessions, system.build_stages(), poll_seconds=0.02)
    runtime.start()
    port = free_port()
    server, thread = _serve(create_app(system), port)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        yield Web(client, system, f"http://img.hoster-a.test:{site.port}", tokens)
    finally:
        client.close()
        server.should_exit = True
        thread.join(5)
        runtime.stop()
        site.stop()
        system.engine.dispose()


def fields(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {e["field"]: e["reason"] for e in response.json()["detail"]}


# --------------------------------------------------------------------------- intake


def test_post_report_is_accepted(web: Web) -> None:
    r = web.client.post("/api/v1/reports", json={"urls": [f"{web.site}/missing.jpg?accepted"], "description": "seen on a forum",
                                                 "reporter_email": "someone@example.org"})
    assert r.status_code == 202
    body = r.json()
    assert re.fullmatch(r"[0-9a-f]{32}", body["report_id"])
    assert body["status_url"] == f"/api/v1/reports/{body['report_id']}"
    assert web.client.get(body["status_url"]).status_code == 200


def test_bad_url_is_422_naming_field_and_reason(web: Web) -> None:
    got = fields(web.client.post("/api/v1/reports", json={"urls": ["http://ok.test/", "ftp://files.test/x.jpg"]}))
    assert list(got) == ["urls"]
    assert "urls[1]" in got["urls"] and "ftp://files.test/x.jpg" in got["urls"]
    assert "only http and https" in got["urls"]
    assert "Value error" not in got["urls"]


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"description": "no urls"}, "urls", "required"),
        ({"urls": []}, "urls", "at least 1"),
        ({"urls": "http://a.test/"}, "urls", "list"),
        ({"urls": ["http://a.test/"], "reporter_email": "not-an-address"}, "reporter_email", "not a valid e-mail"),
        ({"urls": ["http://a.test/"], "reporter_email": "a@b"}, "reporter_email", "not a valid e-mail"),
        ({"urls": ["http://a.test/"], "priority": "high"}, "priority", "not permitted"),
        ({"urls": [""]}, "urls", "empty"),
    ],
)
def test_invalid_input_is_422_naming_field_and_reason(web: Web, body: dict[str, Any], field: str, reason: str) -> None:
    got = fields(web.client.post("/api/v1/reports", json=body))
    assert field in got, got
    assert reason.lower() in got[field].lower(), got


def test_not_json_is_422(web: Web) -> None:
    r = web.client.post("/api/v1/reports", content=b"urls=http://a.test/",
                        headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"]


def test_idempotency_key_returns_the_first_report(web: Web) -> None:
    key = f"retry-{time.monotonic_ns()}"
    first = web.client.post("/api/v1/reports", json={"urls": ["http://idem.test/a"]}, headers={"Idempotency-Key": key})
    again = web.client.post("/api/v1/reports", json={"urls": ["http://idem.test/a"]}, headers={"Idempotency-Key": key})
    other = web.client.post("/api/v1/reports", json={"urls": ["http://idem.test/a"]},
                            headers={"Idempotency-Key": key + "-2"})
    assert first.status_code == again.status_code == other.status_code == 202
    assert again.json()["report_id"] == first.json()["report_id"]
    assert other.json()["report_id"] != first.json()["report_id"]
    no_key = [web.client.post("/api/v1/reports", json={"urls": ["http://idem.test/a"]}).json()["report_id"]
              for _ in range(2)]
    assert no_key[0] != no_key[1]


def test_concurrent_retries_with_one_idempotency_key_get_one_report(web: Web) -> None:
    # A client that times out and retries while its first request is still running. The race
    # is timing-dependent, so several rounds: before the fix about one round in five gave a 500.
    base = str(web.client.base_url)
    for round_no in range(6):
        key = f"race-{round_no}-{time.monotonic_ns()}"
        results: list[tuple[int, str]] = []

        def post(key: str = key, results: list[tuple[int, str]] = results) -> None:
            with httpx.Client(base_url=base, timeout=10) as c:
                r = c.post("/api/v1/reports", json={"urls": ["http://race.test/"]}, headers={"Idempotency-Key": key})
                results.append((r.status_code, r.json().get("report_id", r.text) if r.status_code == 202 else r.text))

        threads = [threading.Thread(target=post) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {code for code, _ in results} == {202}, results
        assert len({rid for _, rid in results}) == 1, results


# --------------------------------------------------------------------------- status


def test_status_anonymous_is_coarse_and_staff_see_the_timeline(web: Web) -> None:
    rid = web.report(f"{web.site}/missing.jpg", f"{web.site}/missing.jpg?second")
    full = web.wait_item(rid, {"closed_offline"})
    item = full["items"][0]
    assert item["state"] == "closed_offline"
    assert "404" in item["reason"]
    assert [e["kind"] for e in item["events"]][:1] == ["received"]
    assert item["events"][-1]["kind"] == "closed_offline"
    assert {"at", "stage", "kind", "detail"} <= set(item["events"][0])
    assert full["items"][1]["item_id"] not in (None, item["item_id"])

    for headers in ({}, web.auth("analyst")):
        body = web.client.get(f"/api/v1/reports/{rid}", headers=headers).json()
        assert body["report_id"] == rid and len(body["items"]) == 2
        if headers:
            assert body["items"][0]["state"] == "closed_offline" and body["items"][0]["events"]
        else:
            assert body["items"][0]["state"] == "closed"
            assert body["items"][0]["state"] in COARSE_STATES
            assert "404" not in body["items"][0]["reason"]
            assert all("events" not in i for i in body["items"])
            assert body["items"][0].get("hoster") is None and body["items"][0].get("country") is None


@pytest.mark.parametrize("role", ["police", "hoster", "partner"])
def test_status_other_roles_see_coarse_only(web: Web, role: str) -> None:
    rid = web.report(f"{web.site}/missing.jpg")
    web.wait_item(rid, {"closed_offline"})
    body = web.client.get(f"/api/v1/reports/{rid}", headers=web.auth(role)).json()
    assert body["items"][0]["state"] == "closed"
    assert "events" not in body["items"][0]


def test_status_unknown_report_is_404(web: Web) -> None:
    assert web.client.get("/api/v1/reports/no-such-report").status_code == 404
    assert web.client.get("/api/v1/reports/no-such-report", headers=web.auth("admin")).status_code == 404


def test_status_with_bad_token_is_401(web: Web) -> None:
    rid = web.report("http://a.test/")
    r = web.client.get(f"/api/v1/reports/{rid}", headers={"Authorization": "Bearer not-a-token"})
    assert r.status_code == 401


# --------------------------------------------------------------------------- assessment


_unknown_images = iter(range(4))


def _awaiting(web: Web) -> str:
    rid = web.report(f"{web.site}/new{next(_unknown_images)}.jpg")
    body = web.wait_item(rid, {"awaiting_assessment"})
    return str(body["items"][0]["item_id"])


def test_assessment_needs_an_analyst(web: Web) -> None:
    item_id = _awaiting(web)
    url = f"/api/v1/items/{item_id}/assessment"
    decision = {"verdict": "illegal", "category": "national"}
    assert web.client.post(url, json=decision).status_code == 401
    assert web.client.post(url, json=decision, headers={"Authorization": "Bearer wrong"}).status_code == 401
    for role in ("police", "hoster", "partner"):
        assert web.client.post(url, json=decision, headers=web.auth(role)).status_code == 403
    # none of the refused calls changed anything
    state = web.client.get("/api/v1/items?state=awaiting_assessment", headers=web.auth("analyst")).json()
    assert item_id in {i["item_id"] for i in state["items"]}

    r = web.client.post(url, json=decision, headers=web.auth("analyst"))
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "escalated"
    assert "police" in r.json()["reason"]

    again = web.client.post(url, json={"verdict": "not_illegal"}, headers=web.auth("analyst"))
    assert again.status_code == 409
    assert "escalated" in again.json()["detail"]


def test_assessment_not_illegal_closes_and_admin_may_assess(web: Web) -> None:
    item_id = _awaiting(web)
    r = web.client.post(f"/api/v1/items/{item_id}/assessment", json={"verdict": "not_illegal"},
                        headers=web.auth("admin"))
    assert r.status_code == 200
    assert r.json()["state"] == "closed_not_illegal"


def test_assessment_of_item_not_awaiting_is_409(web: Web) -> None:
    rid = web.report(f"{web.site}/missing.jpg?x=409")
    item_id = web.wait_item(rid, {"closed_offline"})["items"][0]["item_id"]
    r = web.client.post(f"/api/v1/items/{item_id}/assessment", json={"verdict": "illegal"}, headers=web.auth("analyst"))
    assert r.status_code == 409


def test_assessment_unknown_item_and_bad_verdict(web: Web) -> None:
    r = web.client.post("/api/v1/items/nope/assessment", json={"verdict": "illegal"}, headers=web.auth("analyst"))
    assert r.status_code == 404
    got = fields(web.client.post("/api/v1/items/nope/assessment", json={"verdict": "maybe"}, headers=web.auth("analyst")))
    assert "verdict" in got


# --------------------------------------------------------------------------- the HTML form


def test_report_form_works_without_javascript(web: Web) -> None:
    r = web.client.get("/report")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert '<form method="post" action="/report">' in page
    assert 'name="urls"' in page and 'name="description"' in page and 'name="reporter_email"' in page
    assert "<script" not in page.lower()
    assert web.client.get("/", follow_redirects=False).headers["location"] == "/report"


@pytest.mark.parametrize("host", ["intranet", "nas", "printer.local", "notaurl"])
def test_names_that_cannot_be_on_the_internet_are_422(web: Web, host: str) -> None:
    got = fields(web.client.post("/api/v1/reports", json={"urls": ["http://ok.test/", f"http://{host}/x"]}))
    assert "urls[1]" in got["urls"] and f"http://{host}/x" in got["urls"]
    assert "cannot be on the internet" in got["urls"] and "urls[0]" not in got["urls"]
    # nothing was recorded: no report exists for a refused request
    with web.system.sessions() as s:
        assert not [u for u in s.scalars(sa.select(ReportUrl.url_as_reported)) if host in u]


def test_the_form_shows_an_unreachable_host_inline(web: Web) -> None:
    r = web.client.post("/report", data={"urls": "http://printer.local/scan.jpg", "description": "", "reporter_email": ""})
    assert r.status_code == 422
    assert 'id="errors"' in r.text and "printer.local" in r.text and "cannot be on the internet" in r.text
    assert "http://printer.local/scan.jpg</textarea>" in r.text  # what was typed is kept


def test_report_form_post_thanks_with_the_report_id(web: Web) -> None:
    r = web.client.post("/report", data={"urls": f"{web.site}/missing.jpg?form=1\r\n\r\nhttp://second.test/x",
                                         "description": "two addresses", "reporter_email": ""})
    assert r.status_code == 200
    m = re.search(r'id="report-id">([0-9a-f]{32})<', r.text)
    assert m, r.text
    status = web.client.get(f"/api/v1/reports/{m.group(1)}", headers=web.auth("admin")).json()
    assert status["report_id"] == m.group(1)
    assert 'id="errors"' not in r.text
    # the web channel, both lines, and the item timeline says so
    body = web.wait_item(m.group(1), {"closed_offline", "received", "awaiting_assessment"})
    assert len(body["items"]) == 2
    assert "via web" in body["items"][0]["events"][0]["detail"]


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"urls": "ftp://files.test/x.jpg"}, "only http and https"),
        ({"urls": "   \n  "}, "please enter at least one web address"),
        ({"urls": "http://ok.test/", "reporter_email": "nope"}, "not a valid e-mail address"),
    ],
)
def test_report_form_rerenders_with_errors(web: Web, form: dict[str, str], message: str) -> None:
    r = web.client.post("/report", data=form)
    assert r.status_code == 422
    assert 'id="errors"' in r.text and message in html.unescape(r.text)
    assert 'id="report-id"' not in r.text
    if form["urls"].strip():
        assert html.escape(form["urls"], quote=False) in r.text  # what was typed is kept


def test_report_form_escapes_what_it_echoes(web: Web) -> None:
    evil = '"><script>alert(1)</script>'
    r = web.client.post("/report", data={"urls": evil, "description": evil})
    assert r.status_code == 422
    assert "<script>alert(1)</script>" not in r.text
    assert "&lt;script&gt;" in r.text


# --------------------------------------------------------------------------- metrics, docs


def test_metrics_expose_items_by_state(web: Web) -> None:
    rid = web.report(f"{web.site}/missing.jpg?metrics=1")
    web.wait_item(rid, {"closed_offline"})
    r = web.client.get("/metrics")
    assert r.status_code == 200
    assert "# TYPE hotline_items gauge" in r.text
    m = re.search(r'^hotline_items\{state="closed_offline"\} (\d+(?:\.\d+)?)$', r.text, re.M)
    assert m and float(m.group(1)) >= 1
    assert re.search(r"^hotline_outbox_messages \d", r.text, re.M)


def test_openapi_docs_are_served(web: Web) -> None:
    docs = web.client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = web.client.get("/openapi.json").json()
    assert "/api/v1/reports" in spec["paths"] and "post" in spec["paths"]["/api/v1/reports"]
    assert "/api/v1/reports/{report_id}" in spec["paths"]
    assert "/api/v1/items/{item_id}/assessment" in spec["paths"]
    assert "/report" not in spec["paths"]  # the HTML form is not API


def test_healthz(web: Web) -> None:
    assert web.client.get("/healthz").json() == {"status": "ok"}
