"""Notices that need an operator, through the real web app (uvicorn on loopback), the embedded
runtime on SQLite and a real SMTP server (aiosmtpd): a server that takes the notice and never
answers makes it ``delivery_unknown``; the operator sees it on /operations and marks it
delivered (no mail), resends it (exactly one more mail once the server is healthy) or sends it
to another address. Anonymous callers and analysts cannot act; a double POST sends nothing twice;
every action is in the audit log."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select

from doubles.loopback import LoopbackSite, SmtpSink, free_port, serve_app
from entrypoints.bootstrap import System, bootstrap
from entrypoints.demo import NoDns
from entrypoints.web import create_app
from hashing.image import hash_image
from hashing.synthetic import photo_like_jpeg
from hotline.config import Settings
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.storage.models import AuditLog
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import new_token
from services.notify.mailer import SmtpMailer

HOST = "images.hoster-a.test"
ABUSE = "abuse@hoster-a.test"


@dataclass
class Ops:
    base_url: str
    site: LoopbackSite
    site_url: str
    smtp: SmtpSink
    system: System
    runtime: EmbeddedRuntime
    tokens: dict[str, str]
    image: bytes

    def client(self, role: str | None = "admin") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=10, trust_env=False)

    def browser_like(self, role: str, origin: bool = True) -> httpx.Client:
        """Signed in by cookie, posting from our own page (Origin) unless ``origin`` is False."""
        headers = {"Origin": self.base_url} if origin else {}
        return httpx.Client(base_url=self.base_url, cookies={"hotline_token": self.tokens[role]},
                            headers=headers, timeout=10, trust_env=False, follow_redirects=False)

    def wait(self, check: Any, what: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; runtime errors: {self.runtime.errors}")

    def state(self, notice_id: str, item_id: str) -> tuple[str | None, str | None]:
        with self.system.sessions() as s:
            uow = SqlUnitOfWork(s)
            notice, item = uow.notices.get(notice_id), uow.items.get(item_id)
            return (notice.status if notice else None), (item.state if item else None)

    def audit(self, action: str, subject: str) -> list[AuditLog]:
        with self.system.sessions() as s:
            return list(s.scalars(select(AuditLog).where(AuditLog.action == action, AuditLog.subject == subject)))

    def unconfirmed_notice(self) -> tuple[str, str]:
        """Report a known image while the mail server never answers; (notice id, item id) once
        the notice is ``delivery_unknown`` -- then the server is healthy again."""
        self.smtp.mode = "no_reply"
        path = f"/ops/{uuid.uuid4().hex[:8]}.jpg"
        self.site.add(path, "image/jpeg", self.image)
        with self.client(None) as api:
            r = api.post("/api/v1/reports", json={"urls": [f"{self.site_url}{path}"]})
        assert r.status_code == 202, r.text
        report_id = r.json()["report_id"]

        def unconfirmed() -> str | None:
            with self.client() as api:
                items = api.get(f"/api/v1/reports/{report_id}").json()["items"]
            return items[0]["item_id"] if items and items[0]["state"] == "notice_unconfirmed" else None

        item_id = self.wait(unconfirmed, "the notice to become delivery_unknown")
        self.smtp.mode = "accept"
        return f"ntd-{item_id}", item_id


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    tmp: Path = tmp_path_factory.mktemp("ops")
    site = LoopbackSite("127.0.0.2", free_port("127.0.0.2")).start()
    smtp = SmtpSink().start()
    hosting = tmp / "hosting.yaml"
    hosting.write_text(yaml.safe_dump({
        "hosts": {HOST: ["127.0.0.2"]},
        "networks": [{"range": "127.0.0.2/32", "country": "NL", "asn": 64501, "hoster": "Hoster A B.V.",
                      "abuse": ABUSE}],
    }))
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'hotline.db'}", kafka_brokers=None, hosting_file=hosting,
        partners_file=None, smtp_host=smtp.host, smtp_port=smtp.port, allow_private_fetch=True,
        notice_from="ntd@hotline-ops.test", fetch_timeout_seconds=5,
    )
    system = bootstrap(settings, dns=NoDns())
    system.overrides["mailer"] = SmtpMailer(smtp.host, smtp.port, timeout=1.0)
    image = photo_like_jpeg(640, 480, seed=77)
    tokens = {role: new_token() for role in ("admin", "analyst")}
    with system.sessions() as session:
        store = SqlUnitOfWork(session)
        h = hash_image(image)
        store.bank.add(category="baseline", source="ops test", md5=h.md5, sha1=h.sha1, sha256=h.sha256,
                       pdq=h.pdq, phash=h.phash)
        for role, token in tokens.items():
            store.users.add(f"ops-{role}", role, token)
        store.commit()
    runtime = EmbeddedRuntime(system.sessions, system.build_stages())
    runtime.start()
    port = free_port()
    server, thread = serve_app(create_app(system), port)
    try:
        yield Ops(f"http://127.0.0.1:{port}", site, f"http://{HOST}:{site.port}", smtp, system, runtime, tokens,
                  image)
    finally:
        server.should_exit = True
        thread.join(10)
        runtime.stop()
        smtp.stop()
        site.stop()
        system.engine.dispose()


def test_the_notice_is_listed_and_only_admins_act(ops: Ops) -> None:
    notice_id, item_id = ops.unconfirmed_notice()
    with ops.browser_like("admin") as browser:
        page = browser.get("/operations")
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    for text in (notice_id, f"&lt;{notice_id}@hotline-ops.test&gt;", ABUSE, "Hoster A B.V.", "delivery_unknown",
                 "Mark delivered", "Resend", "Send elsewhere"):
        assert text in page.text, text
    with ops.client("analyst") as api:
        listed = api.get("/api/v1/operations/notices").json()["notices"]
    (row,) = [n for n in listed if n["notice_id"] == notice_id]
    assert row["item_id"] == item_id and row["status"] == "delivery_unknown" and row["abuse_email"] == ABUSE
    assert row["message_id"] == f"<{notice_id}@hotline-ops.test>" and row["hoster"] == "Hoster A B.V."
    assert "not re-sent" in row["last_error"] and row["age_seconds"] >= 0
    assert row["actions"] == ["mark_delivered", "resend", "send_elsewhere"]

    # Analysts may look but not act; anonymous callers neither.
    with ops.browser_like("analyst") as browser:
        view = browser.get("/operations")
        assert view.status_code == 200 and notice_id in view.text and "<button" not in view.text.split("</header>")[1]
        assert browser.post(f"/operations/notices/{notice_id}/resend").status_code == 403
    with httpx.Client(base_url=ops.base_url, trust_env=False, follow_redirects=False) as anonymous:
        assert anonymous.get("/operations").status_code == 303
        assert anonymous.get("/api/v1/operations/notices").status_code == 401
        for action in ("mark-delivered", "resend"):
            assert anonymous.post(f"/api/v1/operations/notices/{notice_id}/{action}").status_code == 401
        post = anonymous.post(f"/operations/notices/{notice_id}/resend")
        assert post.status_code == 303 and post.headers["location"].startswith("/login")
    with ops.client("analyst") as api:
        for action in ("mark-delivered", "resend"):
            assert api.post(f"/api/v1/operations/notices/{notice_id}/{action}").status_code == 403
        assert api.post(f"/api/v1/operations/notices/{notice_id}/send-elsewhere",
                        json={"abuse_email": "abuse@other.test"}).status_code == 403
    # A signed-in admin's browser, posted from another site: refused (form and API).
    with ops.browser_like("admin", origin=False) as browser:
        evil = {"Origin": "http://evil.example"}
        assert browser.post(f"/operations/notices/{notice_id}/resend", headers=evil).status_code == 403
        assert browser.post(f"/api/v1/operations/notices/{notice_id}/resend", headers=evil).status_code == 403
    assert ops.state(notice_id, item_id) == ("delivery_unknown", "notice_unconfirmed")
    assert ops.smtp.count_by_notice()[notice_id] == 1


def test_resend_sends_exactly_one_more_mail(ops: Ops) -> None:
    notice_id, item_id = ops.unconfirmed_notice()
    with ops.client("admin") as api:
        first = api.post(f"/api/v1/operations/notices/{notice_id}/resend")
        again = api.post(f"/api/v1/operations/notices/{notice_id}/resend")
    assert first.status_code == 200, first.text
    assert first.json()["item_state"] in ("notice_queued", "notice_sent")
    assert again.status_code == 409
    ops.wait(lambda: ops.state(notice_id, item_id) == ("sent", "notice_sent"), "the resent notice to be sent")
    assert ops.runtime.wait_idle(10)
    time.sleep(0.3)
    assert ops.smtp.count_by_notice()[notice_id] == 2  # the unanswered one and the resend
    mails = [m for m in ops.smtp.snapshot() if m.notice_id == notice_id]
    assert mails[-1].answered and mails[-1].rcpt_tos == [ABUSE]
    assert mails[-1].message["Message-ID"] == mails[0].message["Message-ID"]
    (row,) = ops.audit("notice_resent", notice_id)
    assert row.actor == "ops-admin"


def test_mark_delivered_moves_the_item_and_sends_nothing(ops: Ops) -> None:
    notice_id, item_id = ops.unconfirmed_notice()
    with ops.browser_like("admin") as browser:
        done = browser.post(f"/operations/notices/{notice_id}/mark-delivered")
        assert done.status_code == 303 and done.headers["location"] == "/operations"
        page = browser.get("/operations")
        assert "marked delivered" in page.text and f'data-notice-id="{notice_id}"' not in page.text
        twice = browser.post(f"/operations/notices/{notice_id}/mark-delivered")
        assert twice.status_code == 303 and "nothing left to resolve" in browser.get("/operations").text
    assert ops.state(notice_id, item_id) == ("sent", "notice_sent")
    assert ops.runtime.wait_idle(10)
    time.sleep(0.3)
    assert ops.smtp.count_by_notice()[notice_id] == 1
    (row,) = ops.audit("notice_marked_delivered", notice_id)
    assert row.actor == "ops-admin"
    with ops.client("admin") as api:
        timeline = api.get(f"/api/v1/reports/{_report_of(ops, item_id)}").json()["items"][0]
    assert timeline["state"] == "notice_sent"


def _report_of(ops: Ops, item_id: str) -> str:
    with ops.system.sessions() as s:
        return SqlUnitOfWork(s).items.report_ids(item_id)[0]


def test_send_elsewhere_delivers_to_the_new_address(ops: Ops) -> None:
    notice_id, item_id = ops.unconfirmed_notice()
    with ops.client("admin") as api:
        bad = api.post(f"/api/v1/operations/notices/{notice_id}/send-elsewhere",
                       json={"abuse_email": "abuse@x.test, other@y.test"})
        assert bad.status_code == 422
        first = api.post(f"/api/v1/operations/notices/{notice_id}/send-elsewhere",
                         json={"abuse_email": "abuse@elsewhere.test"})
        again = api.post(f"/api/v1/operations/notices/{notice_id}/send-elsewhere",
                         json={"abuse_email": "abuse@elsewhere.test"})
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "superseded" and again.status_code == 409
    new_id = f"{notice_id}-2"
    ops.wait(lambda: ops.state(new_id, item_id) == ("sent", "notice_sent"), "the new notice to be sent")
    assert ops.runtime.wait_idle(10)
    time.sleep(0.3)
    counts = ops.smtp.count_by_notice()
    assert counts[notice_id] == 1 and counts[new_id] == 1
    (mail,) = [m for m in ops.smtp.snapshot() if m.notice_id == new_id]
    assert mail.rcpt_tos == ["abuse@elsewhere.test"]
    assert ops.state(notice_id, item_id)[0] == "superseded"
    (row,) = ops.audit("notice_sent_elsewhere", notice_id)
    assert row.actor == "ops-admin" and new_id in row.detail
    with ops.system.sessions() as s:
        assert SqlUnitOfWork(s).audit.verify() == []
