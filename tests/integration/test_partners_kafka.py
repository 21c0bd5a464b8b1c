"""Partner hotlines both ways on the distributed runtime: real Kafka, real PostgreSQL, every
stage and the web app as separate ``hotline serve --stage NAME`` processes, two loopback
partner hotlines (``PartnerEndpoint``), loopback hosters and a real SMTP server.

- The BE partner is down (503) while its forwards are attempted, and recovers later; the DE
  partner is healthy. DE's forwards all arrive while BE is still down (a failing partner
  never holds up another), then BE gets every one of its forwards.
- Every forward is delivered exactly once in effect: the partners dedupe by
  ``Idempotency-Key`` and handle each forward id once; every attempt of one forward carried
  its id as the key; and an item's second forward (after the partner said MO, the item was
  looked up again) arrives after its first.
- The DE partner reports CR on a forward (the item becomes ``removed``), MO on another (a
  new lookup, a new forward ``fwd-<item>-mo-1``); the BE partner's token is refused (403) on a
  DE forward; a DE account cannot file a report for BE.
- The DE partner forwards a report to us (material hosted in NL): it gets status updates
  back at its ``status_endpoint``, in order: acknowledged, notice sent, removed (the
  follow-up's re-check finds the image gone).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from doubles.loopback import LoopbackSite, PartnerEndpoint, SmtpSink, free_port
from hashing.synthetic import photo_like_jpeg
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.models import Forward, Item
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import new_token
from schemas.reports import ReportSubmitted
from tests.integration import scenario
from tests.integration.scenario import KafkaPipeline, StageProcesses, wait_for
from tests.integration.test_kafka_pipeline import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WAIT = 90.0  # generous bound on a busy machine; every wait ends as soon as its condition holds
STAGES = ("ingest", "classify", "notify", "escalate", "followup")
NL, DE, BE = "images.hoster-a.test", "cdn.hoster-de.test", "img.hoster-be.test"
HOSTER_A = "abuse@hoster-a.test"
ENV = {
    "HOTLINE_FORWARD_RETRY_SECONDS": "0.2",
    "HOTLINE_FORWARD_RETRY_MAX_SECONDS": "1",
    "HOTLINE_FORWARD_TICK_SECONDS": "0.2",
    "HOTLINE_RECHECK_SECONDS": "1",
    "HOTLINE_RECHECK_CONFIRM_SECONDS": "0.5",
    "HOTLINE_RECHECK_JITTER": "0",
    "HOTLINE_FOLLOWUP_TICK_SECONDS": "0.2",
    "HOTLINE_REMOVAL_DEADLINE_SECONDS": "3600",
    "HOTLINE_ALLOW_PRIVATE_FETCH": "true",
}


@contextlib.contextmanager
def partner_world(tmp: Path) -> Iterator[dict[str, Any]]:
    known = [photo_like_jpeg(320, 240, seed=9100 + i) for i in range(2)]
    with contextlib.ExitStack() as running:
        sites = {}
        for name, ip in ((NL, "127.0.0.2"), (DE, "127.0.0.4"), (BE, "127.0.0.5")):
            sites[name] = running.enter_context(_started(LoopbackSite(ip)))
        de = running.enter_context(_started(PartnerEndpoint(new_token())))
        be = running.enter_context(_started(PartnerEndpoint(new_token())))
        mail = SmtpSink().start()
        running.callback(mail.stop)
        hosting = tmp / "hosting.yaml"
        hosting.write_text(yaml.safe_dump({
            "hosts": {NL: ["127.0.0.2"], DE: ["127.0.0.4"], BE: ["127.0.0.5"]},
            "networks": [
                {"range": "127.0.0.2/32", "country": "NL", "asn": 64501, "hoster": "Hoster A B.V.", "abuse": HOSTER_A},
                {"range": "127.0.0.4/32", "country": "DE", "asn": 64503, "hoster": "Hoster DE GmbH",
                 "abuse": "abuse@hoster-de.test"},
                {"range": "127.0.0.5/32", "country": "BE", "asn": 64504, "hoster": "Hoster BE SA",
                 "abuse": "abuse@hoster-be.test"},
            ],
        }))
        partners = tmp / "partners.yaml"
        partners.write_text(yaml.safe_dump({"partners": [
            {"country": "DE", "name": "Partner DE", "endpoint": de.url, "token_env": "HOTLINE_PARTNER_DE_TOKEN",
             "status_endpoint": de.status_url},
            {"country": "BE", "name": "Partner BE", "endpoint": be.url, "token_env": "HOTLINE_PARTNER_BE_TOKEN"},
        ]}))
        yield {"sites": sites, "de": de, "be": be, "mail": mail, "known": known, "env": {
            "HOTLINE_SMTP_HOST": "127.0.0.1", "HOTLINE_SMTP_PORT": str(mail.port),
            "HOTLINE_HOSTING_FILE": str(hosting), "HOTLINE_PARTNERS_FILE": str(partners),
            "HOTLINE_PARTNER_DE_TOKEN": de.token, "HOTLINE_PARTNER_BE_TOKEN": be.token,
        }}


@contextlib.contextmanager
def _started(server: Any) -> Iterator[Any]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def partners_db(pg_url: str) -> Iterator[str]:
    with scenario.fresh_pg_database(pg_url, "kpartners") as url:
        migrate(url)
        yield url


def forwards(sessions: sessionmaker[Session]) -> dict[str, Forward]:
    with sessions() as s:
        return {f.id: f for f in s.scalars(select(Forward)).all()}


def item(sessions: sessionmaker[Session], url: str) -> Item | None:
    with sessions() as s:
        return s.scalar(select(Item).where(Item.url == url).order_by(Item.first_seen.desc()).limit(1))


def test_forwards_and_status_both_ways(
    tmp_path: Path, kafka_brokers: str, partners_db: str, unique_topic_prefix: str
) -> None:
    engine = make_engine(partners_db)
    sessions = make_sessionmaker(engine)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    prefix = unique_topic_prefix + "."
    port = free_port()
    tokens = {"DE": new_token(), "BE": new_token()}
    with contextlib.ExitStack() as running, partner_world(tmp_path) as w:
        with sessions() as s:
            store = SqlUnitOfWork(s)
            scenario.load_bank(store, w["known"])
            for country, token in tokens.items():
                store.users.add(f"partner-{country.lower()}", "partner", token, country)
            store.commit()
        de, be, mail = w["de"], w["be"], w["mail"]
        pipeline = KafkaPipeline(kafka_brokers, prefix, sessions, relay=False)
        running.callback(pipeline.close)
        env = {**w["env"], **ENV, "HOTLINE_DATABASE_URL": partners_db, "HOTLINE_KAFKA_BROKERS": kafka_brokers,
               "HOTLINE_TOPIC_PREFIX": prefix, "HOTLINE_KAFKA_PARTITIONS": "3", "PYTHONPATH": str(REPO)}
        procs = StageProcesses(env, log_dir)
        running.callback(procs.stop_all)
        try:
            _scenario(w, de, be, mail, pipeline, procs, sessions, port, tokens)
        except BaseException as exc:
            codes = procs.stop_all()
            raise AssertionError(f"{exc}\nexit codes {codes}\n{procs.logs()}") from exc
    engine.dispose()


def _scenario(w: dict[str, Any], de: PartnerEndpoint, be: PartnerEndpoint, mail: SmtpSink, pipeline: KafkaPipeline,
              procs: StageProcesses, sessions: sessionmaker[Session], port: int, tokens: dict[str, str]) -> None:
    sites = w["sites"]
    for stage in STAGES:
        procs.start(stage)
    procs.start("web", "--host", "127.0.0.1", "--port", str(port))
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    wait_for("the web process", lambda: _up(api), WAIT)
    as_de = {"Authorization": f"Bearer {tokens['DE']}"}
    as_be = {"Authorization": f"Bearer {tokens['BE']}"}

    def url(host: str, path: str) -> str:
        return f"http://{host}:{sites[host].port}{path}"

    # -- BE is down: its forwards are attempted, fail, and stay pending ----------------------
    be.down = True
    be_urls = [url(BE, f"/k{i}.jpg") for i in range(3)]
    de_urls = [url(DE, f"/k{i}.jpg") for i in range(3)]
    for i in range(3):
        sites[BE].add(f"/k{i}.jpg", "image/jpeg", w["known"][i % 2])
        sites[DE].add(f"/k{i}.jpg", "image/jpeg", w["known"][i % 2])
    for u in be_urls:
        pipeline.submit(ReportSubmitted(channel="web", urls=[u]))
    wait_for("every BE forward attempted and failed",
             lambda: len({p.idempotency_key for p in be.snapshot() if p.status == 503}) == 3, WAIT)

    # -- DE is healthy: its forwards arrive while BE is still down ---------------------------
    for u in de_urls:
        pipeline.submit(ReportSubmitted(channel="web", urls=[u]))
    wait_for("every DE forward", lambda: len(de.received) == 3, WAIT)
    assert not be.received and be.down  # BE has nothing yet: DE did not wait for it
    fwds = forwards(sessions)
    assert {f.status for f in fwds.values() if f.country == "BE"} == {"pending"}
    assert all(f.last_error and f.next_attempt_at for f in fwds.values() if f.country == "BE")

    # The operators' list shows BE's pending forwards with attempts and last error.
    admin = new_token()
    with sessions() as s:
        SqlUnitOfWork(s).users.add("ops-admin", "admin", admin)
        s.commit()
    listed = api.get("/api/v1/operations/deliveries", headers={"Authorization": f"Bearer {admin}"}).json()
    pending_be = [d for d in listed["deliveries"] if d["country"] == "BE"]
    assert len(pending_be) == 3 and all(d["status"] == "pending" and d["attempts"] >= 1 for d in pending_be)

    # -- BE recovers: each of its forwards arrives, once ------------------------------------
    be.down = False
    wait_for("every BE forward after recovery", lambda: len(be.received) == 3, WAIT)
    wait_for("every forward recorded sent", lambda: {f.status for f in forwards(sessions).values()} == {"sent"}, WAIT)
    for u in de_urls + be_urls:
        wait_for(f"{u} forwarded", lambda u=u: (i := item(sessions, u)) is not None and i.state == "forwarded", WAIT)

    # -- the DE partner reports back ----------------------------------------------------------
    fwd_of = {f.item_id: f.id for f in forwards(sessions).values()}
    removed_item = item(sessions, de_urls[0])
    moved_item = item(sessions, de_urls[1])
    assert removed_item is not None and moved_item is not None
    cr = api.post(f"/api/v1/partner/forwards/{fwd_of[removed_item.id]}/status", headers=as_de,
                  json={"action": "CR", "note": "removed by the hoster"})
    assert cr.status_code == 200, cr.text
    assert cr.json()["item_state"] == "removed"
    again = api.post(f"/api/v1/partner/forwards/{fwd_of[removed_item.id]}/status", headers=as_de,
                     json={"action": "CR"})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    gone = item(sessions, de_urls[0])
    assert gone is not None and gone.state == "removed" and "after the forward" in gone.reason
    # Another country's token: refused; an unknown forward: 404.
    other = api.post(f"/api/v1/partner/forwards/{fwd_of[moved_item.id]}/status", headers=as_be,
                     json={"action": "CR"})
    assert other.status_code == 403, other.text
    assert api.post("/api/v1/partner/forwards/fwd-nope/status", headers=as_de,
                    json={"action": "CR"}).status_code == 404
    listing = api.get("/api/v1/partner/forwards", headers=as_be).json()
    assert {f["country"] for f in listing["forwards"]} == {"BE"} and len(listing["forwards"]) == 3

    mo = api.post(f"/api/v1/partner/forwards/{fwd_of[moved_item.id]}/status", headers=as_de,
                  json={"action": "MO", "note": "moved, look again"})
    assert mo.status_code == 200, mo.text
    relookup = f"fwd-{moved_item.id}-mo-1"
    wait_for("the forward after the new lookup", lambda: any(f.body["forward_id"] == relookup for f in de.received),
             WAIT)

    # -- exactly once in effect, one key per forward, in order per item ------------------------
    for endpoint in (de, be):
        posts = endpoint.snapshot()
        assert all(p.idempotency_key == p.body.get("forward_id") for p in posts if p.path.endswith("/forwards"))
        handled = [f.body["forward_id"] for f in endpoint.received]
        assert len(handled) == len(set(handled))
        assert all(endpoint.handled[k] == 1 for k in handled)
    assert any(p.status == 503 for p in be.snapshot())  # BE really failed before it recovered
    first = next(f for f in de.received if f.body["forward_id"] == fwd_of[moved_item.id])
    second = next(f for f in de.received if f.body["forward_id"] == relookup)
    assert first.at < second.at
    per_item: dict[str, list[str]] = defaultdict(list)
    for f in de.received + be.received:
        per_item[f.body["item_id"]].append(f.body["forward_id"])
    assert per_item[moved_item.id] == [fwd_of[moved_item.id], relookup]

    # -- a report the DE partner forwarded to us gets status updates back ----------------------
    sites[NL].add("/de-case.jpg", "image/jpeg", w["known"][0])
    nl_url = url(NL, "/de-case.jpg")
    refused = api.post("/api/v1/partner/reports", headers=as_de,
                       json={"urls": [nl_url], "partner_reference": "DE-1", "partner_country": "BE"})
    assert refused.status_code == 403, refused.text
    r = api.post("/api/v1/partner/reports", headers=as_de, json={"urls": [nl_url], "partner_reference": "DE-1"})
    assert r.status_code == 202, r.text
    report_id = r.json()["report_id"]
    wait_for("the notice to Hoster A", lambda: any(HOSTER_A in m.rcpt_tos for m in mail.snapshot()), WAIT)
    wait_for("acknowledged and notice_sent updates", lambda: len(de.updates_for(report_id)) >= 2, WAIT)
    sites[NL].remove("/de-case.jpg")
    wait_for("the removed update", lambda: len(de.updates_for(report_id)) == 3, WAIT)
    updates = de.updates_for(report_id)
    assert [u.body["step"] for u in updates] == ["acknowledged", "notice_sent", "removed"]
    assert [u.body["action"] for u in updates] == [None, "ISP", "CR"]
    assert all(u.idempotency_key == u.body["update_id"] for u in updates)
    assert {u.body["partner_reference"] for u in updates} == {"DE-1"}
    mine = api.get(f"/api/v1/partner/reports/{report_id}", headers=as_de)
    assert mine.status_code == 200 and mine.json()["items"][0]["iccam"] == "CR"
    assert api.get(f"/api/v1/partner/reports/{report_id}", headers=as_be).status_code == 404
    assert not be.status_updates  # BE forwarded nothing to us
    api.close()


def _up(api: httpx.Client) -> bool:
    try:
        return api.get("/report").status_code == 200
    except httpx.HTTPError:
        return False
