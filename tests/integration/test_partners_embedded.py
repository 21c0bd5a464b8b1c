"""A forward the partner refuses, through the real web app (uvicorn on loopback) and the
embedded runtime on SQLite with escalate's dispatcher: the partner answers 401 to a wrong
token, the forward is ``refused`` and stays on the operations page (page and API) with its
error while the item stays ``forward_queued``; an admin fixes the token and retries it from
the page's form, and the partner gets it exactly once. An analyst may see, not retry."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from doubles.loopback import LoopbackSite, PartnerEndpoint, free_port, serve_app
from entrypoints.bootstrap import bootstrap
from entrypoints.demo import NoDns
from entrypoints.web import create_app
from hashing.image import hash_image
from hashing.synthetic import photo_like_jpeg
from hotline.config import Settings
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import new_token
from services.escalate.forwards import DeliveryDispatcher

pytestmark = pytest.mark.integration

TOKEN_ENV = "HOTLINE_TEST_PARTNER_DE_TOKEN"


def wait(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def ticks_passed(runtime: EmbeddedRuntime, n: int) -> None:
    """Wait until the dispatcher has ticked ``n`` more times (instead of sleeping a fixed time)."""
    (dispatcher,) = [p for p in runtime.periodic if isinstance(p.task, DeliveryDispatcher)]  # beside the hold timer
    start = dispatcher.ticks
    wait(lambda: dispatcher.ticks >= start + n, f"{n} dispatcher ticks")
    assert runtime.wait_idle(20)


def test_a_refused_forward_waits_for_an_operator_and_is_retried_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = photo_like_jpeg(320, 240, seed=4242)
    site = LoopbackSite("127.0.0.4").start()
    partner = PartnerEndpoint(new_token()).start()
    monkeypatch.setenv(TOKEN_ENV, "not-the-partners-token")
    site.add("/k.jpg", "image/jpeg", image)
    (tmp_path / "hosting.yaml").write_text(yaml.safe_dump({
        "hosts": {"cdn.hoster-de.test": ["127.0.0.4"]},
        "networks": [{"range": "127.0.0.4/32", "country": "DE", "hoster": "Hoster DE GmbH",
                      "abuse": "abuse@hoster-de.test"}],
    }))
    (tmp_path / "partners.yaml").write_text(yaml.safe_dump({"partners": [
        {"country": "DE", "name": "Partner DE", "endpoint": partner.url, "token_env": TOKEN_ENV}]}))
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'h.db'}", hosting_file=tmp_path / "hosting.yaml",
                        partners_file=tmp_path / "partners.yaml", allow_private_fetch=True, index_dir="none",
                        forward_tick_seconds=0.1, forward_retry_seconds=0.1)
    system = bootstrap(settings, dns=NoDns())
    tokens = {"admin": new_token(), "analyst": new_token()}
    with system.sessions() as s:
        store = SqlUnitOfWork(s)
        h = hash_image(image)
        store.bank.add(category="baseline", source="test", md5=h.md5, sha1=h.sha1, sha256=h.sha256, pdq=h.pdq)
        for role, token in tokens.items():
            store.users.add(f"t-{role}", role, token)
        store.commit()
    system.bank.refresh()
    runtime = EmbeddedRuntime(system.sessions, system.build_stages(), periodic=system.periodic_for(("escalate",)))
    runtime.start()
    port = free_port()
    server, thread = serve_app(create_app(system), port)
    base = f"http://127.0.0.1:{port}"
    api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {tokens['admin']}"}, timeout=10)
    try:
        url = f"http://cdn.hoster-de.test:{site.port}/k.jpg"
        r = api.post("/api/v1/reports", json={"urls": [url]})
        assert r.status_code == 202, r.text

        def refused() -> list[dict[str, Any]]:
            rows = api.get("/api/v1/operations/deliveries").json()["deliveries"]
            return [d for d in rows if d["status"] == "refused"]

        (row,) = wait(refused, "the refused forward on the operations list")
        assert row["kind"] == "forward" and "HTTP 401" in row["last_error"] and row["actions"] == ["retry"]
        assert partner.refused == 1 and partner.received == []
        report = api.get(f"/api/v1/reports/{r.json()['report_id']}").json()
        assert report["items"][0]["state"] == "forward_queued"  # not lost, not back to an analyst
        ticks_passed(runtime, 3)  # a refused forward is not attempted again
        assert partner.refused == 1

        analyst = httpx.Client(base_url=base, cookies={"hotline_token": tokens["analyst"]},
                               headers={"Origin": base}, timeout=10, follow_redirects=False)
        page = analyst.get("/operations")
        assert page.status_code == 200 and f'data-id="{row["id"]}"' in page.text and "HTTP 401" in page.text
        assert 'class="retry"' not in page.text  # analysts see, admins act
        assert analyst.post(f"/operations/deliveries/forward/{row['id']}/retry").status_code == 403
        assert partner.received == []

        monkeypatch.setenv(TOKEN_ENV, partner.token)  # the operator fixed the credentials
        admin = httpx.Client(base_url=base, cookies={"hotline_token": tokens["admin"]}, headers={"Origin": base},
                             timeout=10, follow_redirects=False)
        assert 'class="retry"' in admin.get("/operations").text
        done = admin.post(f"/operations/deliveries/forward/{row['id']}/retry")
        assert done.status_code == 303
        wait(lambda: len(partner.received) == 1, "the forward after the retry")
        wait(lambda: api.get(f"/api/v1/reports/{r.json()['report_id']}").json()["items"][0]["state"] == "forwarded",
             "the item forwarded")
        again = api.post(f"/api/v1/operations/forwards/{row['id']}/retry")
        assert again.status_code == 409  # sent: nothing to retry
        ticks_passed(runtime, 3)
        assert len(partner.received) == 1 and partner.handled[row["id"]] == 1
        assert "deliveries-empty" in admin.get("/operations").text
    finally:
        server.should_exit = True
        thread.join(5)
        runtime.stop()
        partner.stop()
        site.stop()
        system.close()
