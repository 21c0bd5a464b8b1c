"""The police API and page over real HTTP on loopback (embedded runtime, SQLite): who may see
and act, 404/409/422, the audit of what the police saw and did, and a release that becomes the
NTD through the running escalate and notify stages (a recording mailer)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import select

from doubles.loopback import LoopbackSite, free_port
from entrypoints.bootstrap import bootstrap
from entrypoints.web import create_app
from hashing.synthetic import photo_like_jpeg
from hotline.config import Settings
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.storage.models import AuditLog
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import new_token
from services.notify.mailer import RecordingMailer
from tests.integration.test_web_api import NoDns, Web, _serve


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Web, RecordingMailer]]:
    tmp: Path = tmp_path_factory.mktemp("police-web")
    site = LoopbackSite("127.0.0.2").start()
    for n in range(4):
        site.add(f"/new{n}.jpg", "image/jpeg", photo_like_jpeg(256, 192, seed=7100 + n))
    same = photo_like_jpeg(256, 192, seed=7199)  # one picture at two URLs
    site.add("/dup/a.jpg", "image/jpeg", same)
    site.add("/dup/b.jpg", "image/jpeg", same)
    hosting = tmp / "hosting.yaml"
    hosting.write_text(yaml.safe_dump({
        "hosts": {"img.hoster-a.test": ["127.0.0.2"]},
        "networks": [{"range": "127.0.0.2/32", "country": "NL", "asn": 64501, "hoster": "Hoster A B.V.",
                      "abuse": "abuse@hoster-a.test"}],
    }))
    settings = Settings(database_url=f"sqlite:///{tmp / 'hotline.db'}", kafka_brokers=None, hosting_file=hosting,
                        partners_file=None, allow_private_fetch=True, hotline_name="Test Hotline",
                        fetch_timeout_seconds=5)
    mailer = RecordingMailer()
    system = bootstrap(settings, dns=NoDns(), mailer=mailer)
    tokens = {role: new_token() for role in ("admin", "analyst", "police")}
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
        yield Web(client, system, f"http://img.hoster-a.test:{site.port}", tokens), mailer
    finally:
        client.close()
        server.should_exit = True
        thread.join(5)
        runtime.stop()
        site.stop()
        system.engine.dispose()


def escalate(web: Web, n: int) -> str:
    """Report /new{n}.jpg, confirm it as an analyst; the escalation id."""
    report_id = web.report(f"{web.site}/new{n}.jpg")
    item = web.wait_item(report_id, {"awaiting_assessment"})["items"][0]
    r = web.client.post(f"/api/v1/items/{item['item_id']}/assessment", headers=web.auth("analyst"),
                        json={"verdict": "illegal", "category": "baseline"})
    assert r.status_code == 200, r.text
    return f"pol-{item['item_id']}"


def test_who_may_see_the_escalations(web: tuple[Web, RecordingMailer]) -> None:
    w, _ = web
    assert w.client.get("/api/v1/escalations").status_code == 401
    assert w.client.get("/api/v1/escalations", headers=w.auth("analyst")).status_code == 403
    assert w.client.get("/api/v1/escalations", headers=w.auth("admin")).status_code == 200
    assert w.client.post("/api/v1/escalations/pol-x/release", headers=w.auth("analyst")).status_code == 403
    r = w.client.get("/police", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/police"


def test_hold_then_release_sends_one_notice_and_everything_is_audited(web: tuple[Web, RecordingMailer]) -> None:
    w, mailer = web
    esc_id = escalate(w, 0)
    police = w.auth("police")
    listed = w.client.get("/api/v1/escalations", headers=police).json()["escalations"]
    mine = next(e for e in listed if e["escalation_id"] == esc_id)
    assert mine["state"] == "new" and mine["images"][0]["sha256"] and mine["hosting"]["country"] == "NL"
    assert mine["classification"]["category"] == "baseline" and mine["report_ids"] and mine["first_seen"]
    assert mine["actions"] == ["received", "hold", "release"]

    assert w.client.post("/api/v1/escalations/pol-nothing/hold", headers=police, json={"reason": "x"}).status_code == 404
    assert w.client.post(f"/api/v1/escalations/{esc_id}/hold", headers=police, json={}).status_code == 422
    assert w.client.post(f"/api/v1/escalations/{esc_id}/received", headers=police).json()["state"] == "received"
    held = w.client.post(f"/api/v1/escalations/{esc_id}/hold", headers=police, json={"reason": "investigation"})
    assert held.status_code == 200 and held.json()["state"] == "on_hold" and held.json()["hold_reason"] == "investigation"
    assert w.client.post(f"/api/v1/escalations/{esc_id}/received", headers=police).status_code == 409
    # Signed in by cookie alone, from another site: refused.
    cookie_only = httpx.Client(base_url=str(w.client.base_url), cookies={"hotline_token": w.tokens["police"]},
                               headers={"Origin": "http://evil.example"})
    with cookie_only:
        assert cookie_only.post(f"/api/v1/escalations/{esc_id}/release").status_code == 403
    released = w.client.post(f"/api/v1/escalations/{esc_id}/release", headers=police)
    assert released.status_code == 200 and released.json()["state"] == "released"
    assert w.client.post(f"/api/v1/escalations/{esc_id}/release", headers=police).status_code == 409

    item_id = esc_id.removeprefix("pol-")

    def sent() -> bool:
        return any(m["X-Hotline-Notice-Id"] == f"ntd-{item_id}" for m in mailer.sent)

    deadline = time.monotonic() + 20
    while not sent():
        assert time.monotonic() < deadline, "the NTD after the release was not sent"
        time.sleep(0.05)
    assert sum(m["X-Hotline-Notice-Id"] == f"ntd-{item_id}" for m in mailer.sent) == 1
    final = next(e for e in w.client.get("/api/v1/escalations", headers=police).json()["escalations"]
                 if e["escalation_id"] == esc_id)
    assert final["outcome"].startswith(f"notice ntd-{item_id} to abuse@hoster-a.test")
    with w.system.sessions() as s:
        rows = s.scalars(select(AuditLog).where(AuditLog.subject.in_([esc_id, "GET /api/v1/escalations"]))).all()
        actions = [(r.actor, r.action) for r in rows if r.subject == esc_id]
        assert ("test-police", "police_received") in actions and ("test-police", "police_hold") in actions
        assert ("test-police", "police_release") in actions and ("escalate", "police_release_outcome") in actions
        assert any(r.action == "police_viewed" and esc_id in r.detail for r in rows)
        assert SqlUnitOfWork(s).audit.verify() == []


ONION = "http://" + "b" * 20 + "234567" * 6 + ".onion/gallery"


def test_a_tor_hidden_service_goes_to_the_police_at_once_and_is_never_noticed(
    web: tuple[Web, RecordingMailer],
) -> None:
    w, mailer = web
    report_id = w.report(ONION)
    item = w.wait_item(report_id, {"escalated", "closed_offline"})["items"][0]
    # escalated, not "offline": the name was never looked up or fetched (NoDns would have failed it)
    assert item["state"] == "escalated" and "Tor hidden service" in item["reason"], item
    police = w.auth("police")
    listed = w.client.get("/api/v1/escalations", headers=police).json()["escalations"]
    mine = next(e for e in listed if e["item_id"] == item["item_id"])
    assert mine["reason"] == "onion" and mine["url"] == ONION and mine["classification"] is None
    assert mine["release_due_at"] is None  # no hold timer: there is nothing to take down
    assert "onion" in w.client.get("/police", headers=police).text
    released = w.client.post(f"/api/v1/escalations/{mine['escalation_id']}/release", headers=police)
    assert released.status_code == 200

    def outcome() -> str | None:
        row = next(e for e in w.client.get("/api/v1/escalations", headers=police).json()["escalations"]
                   if e["item_id"] == item["item_id"])
        return row["outcome"]

    deadline = time.monotonic() + 20
    while outcome() is None:
        assert time.monotonic() < deadline, "the release of the onion escalation was not processed"
        time.sleep(0.05)
    assert "no takedown" in (outcome() or "")
    assert not [m for m in mailer.sent if item["item_id"] in m["X-Hotline-Notice-Id"]]
    assert w.wait_item(report_id, {"escalated"})["items"][0]["state"] == "escalated"


def test_one_picture_at_two_urls_is_decided_once(web: tuple[Web, RecordingMailer]) -> None:
    w, mailer = web
    first = w.wait_item(w.report(f"{w.site}/dup/a.jpg"), {"awaiting_assessment"})["items"][0]
    second = w.wait_item(w.report(f"{w.site}/dup/b.jpg"), {"awaiting_assessment"})["items"][0]
    seen = [e["detail"] for e in second["events"] if e["kind"] == "also_seen"]
    assert seen and first["item_id"] in seen[0] and "/dup/a.jpg" in seen[0]
    r = w.client.post(f"/api/v1/items/{first['item_id']}/assessment", headers=w.auth("analyst"),
                      json={"verdict": "illegal", "category": "national"})
    assert r.status_code == 200, r.text
    queue = [i["item_id"] for i in w.client.get("/api/v1/items", headers=w.auth("analyst")).json()["items"]]
    assert second["item_id"] not in queue  # the analyst decided once
    police = w.auth("police")
    esc = next(e for e in w.client.get("/api/v1/escalations", headers=police).json()["escalations"]
               if e["item_id"] == first["item_id"])
    assert [c["item_id"] for c in esc["copies"]] == [second["item_id"]]
    assert w.client.post(f"/api/v1/escalations/{esc['escalation_id']}/release", headers=police).status_code == 200

    wanted = {f"ntd-{first['item_id']}", f"ntd-{second['item_id']}"}
    deadline = time.monotonic() + 20
    while not wanted <= {m["X-Hotline-Notice-Id"] for m in mailer.sent}:
        assert time.monotonic() < deadline, "the copy's notice did not follow the release"
        time.sleep(0.05)
    assert sum(m["X-Hotline-Notice-Id"] in wanted for m in mailer.sent) == 2
