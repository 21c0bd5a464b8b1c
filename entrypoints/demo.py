"""``hotline demo``: the whole pipeline, embedded, on synthetic data, in about ten seconds.

It starts loopback web sites that play three hosting providers (two in NL,
one in DE where a partner hotline works), a partner endpoint, an SMTP server,
the web app and the four stages; loads a bank with hashes of some generated
images; submits a dozen reports through the public API; acts as an analyst
for the items that need one; then prints what happened to each report, the
counts, and the time from submission to each outcome. Exit code 0 means every
report ended where it should.
"""

from __future__ import annotations

import io
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml
from PIL import Image

from doubles.loopback import LoopbackSite, PartnerEndpoint, SmtpSink, free_port, serve_app
from hashing.image import hash_image
from hashing.synthetic import generate_photo_like, jpeg_bytes, photo_like_jpeg
from hotline.config import Settings
from hotline.kernel.states import REJECTED, ItemState
from hotline.storage.unit_of_work import SqlUnitOfWork

# Where the demo stops waiting for an item: the outcome of its first step.
S = ItemState
OUTCOMES = {S.NOTICE_SENT, S.FORWARDED, S.ESCALATED, S.CLOSED_OFFLINE, S.CLOSED_NOT_ILLEGAL, REJECTED}


class NoDns:
    """The demo resolves names from its hosting file only: no DNS query leaves the machine."""

    def resolve(self, host: str) -> list[str]:
        raise OSError(f"{host} is not in the demo's hosting file")


@dataclass
class Case:
    label: str
    urls: list[str]
    expect: str  # expected final state of the (first) item, or "rejected"
    analyst: str | None = None  # verdict the demo analyst gives
    expect_detail: str = ""
    report_id: str | None = None
    submitted: float = 0.0
    done: float | None = None
    state: str = ""
    reason: str = ""
    item_id: str | None = None


def _near_duplicate(seed: int) -> bytes:
    """A re-upload of a known picture: scaled to 70 % and re-encoded at low quality."""
    img = generate_photo_like(1024, 768, seed=seed)
    small = img.resize((717, 538), Image.Resampling.BILINEAR)
    return jpeg_bytes(small, quality=60)


def _page(title: str, images: list[str]) -> bytes:
    tags = "".join(f'<img src="{src}" alt="">' for src in images)
    return f"<!doctype html><html><head><title>{title}</title></head><body><h1>{title}</h1>{tags}</body></html>".encode()


def run_demo(quiet: bool = False) -> int:
    from entrypoints.bootstrap import bootstrap
    from entrypoints.web import create_app
    from hotline.runtime.embedded import EmbeddedRuntime

    def say(text: str = "") -> None:
        if not quiet:
            print(text, flush=True)

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hotline-demo-") as tmp:
        tmpdir = Path(tmp)
        # --- the outside world, on loopback ---------------------------------
        port = free_port("127.0.0.2")
        site_a = LoopbackSite("127.0.0.2", port).start()
        site_b = LoopbackSite("127.0.0.3", port).start()
        site_de = LoopbackSite("127.0.0.4", port).start()
        partner_token = secrets.token_urlsafe(16)
        os.environ["HOTLINE_PARTNER_DE_TOKEN"] = partner_token
        partner = PartnerEndpoint(partner_token).start()
        smtp = SmtpSink().start()

        a, b, de = (f"http://images.hoster-a.test:{port}", f"http://www.hoster-b.test:{port}",
                    f"http://cdn.hoster-de.test:{port}")
        known = {n: photo_like_jpeg(1024, 768, seed=n) for n in (1, 2, 3)}
        site_a.add("/img/known1.jpg", "image/jpeg", known[1])
        site_b.add("/gallery/2.jpg", "image/jpeg", known[2])
        site_b.add("/gallery.html", "text/html", _page("Gallery", ["/gallery/2.jpg", "/static/logo.png"]))
        logo = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 30, 30)).save(logo, "PNG")
        site_b.add("/static/logo.png", "image/png", logo.getvalue())
        site_de.add("/k3.jpg", "image/jpeg", known[3])
        site_de.add("/album.html", "text/html", _page("Album", [f"{de}/k3.jpg"]))
        site_a.add("/new/4.jpg", "image/jpeg", photo_like_jpeg(1024, 768, seed=4))
        site_b.add("/holiday.jpg", "image/jpeg", photo_like_jpeg(800, 600, seed=5))
        site_b.add("/re/known1-small.jpg", "image/jpeg", _near_duplicate(1))

        hosting_file = tmpdir / "hosting.yaml"
        hosting_file.write_text(yaml.safe_dump({
            "hosts": {"images.hoster-a.test": ["127.0.0.2"], "www.hoster-b.test": ["127.0.0.3"],
                      "cdn.hoster-de.test": ["127.0.0.4"]},
            "networks": [
                {"range": "127.0.0.2/32", "country": "NL", "asn": 64501, "hoster": "Hoster A B.V.", "abuse": "abuse@hoster-a.test"},
                {"range": "127.0.0.3/32", "country": "NL", "asn": 64502, "hoster": "Hoster B B.V.", "abuse": "abuse@hoster-b.test"},
                {"range": "127.0.0.4/32", "country": "DE", "asn": 64503, "hoster": "Hoster DE GmbH", "abuse": "abuse@hoster-de.test"},
            ],
        }))
        partners_file = tmpdir / "partners.yaml"
        partners_file.write_text(yaml.safe_dump({"partners": [
            {"country": "DE", "name": "Partner hotline DE", "endpoint": partner.url, "token_env": "HOTLINE_PARTNER_DE_TOKEN"},
        ]}))
        settings = Settings(
            database_url=f"sqlite:///{tmpdir / 'hotline.db'}",
            kafka_brokers=None,
            hosting_file=hosting_file,
            partners_file=partners_file,
            smtp_host=smtp.host,
            smtp_port=smtp.port,
            allow_private_fetch=True,  # the demo's "hosters" live on loopback
            notice_from="ntd@hotline-demo.test",
            hotline_name="Hotline (demo)",
            forward_retry_seconds=0.2,
        )
        system = bootstrap(settings, dns=NoDns())

        # --- bank and accounts ---------------------------------------------
        with system.sessions() as session:
            store = SqlUnitOfWork(session)
            for data in known.values():
                h = hash_image(data)
                store.bank.add(category="baseline", source="demo bank", md5=h.md5, sha1=h.sha1,
                                     sha256=h.sha256, pdq=h.pdq, phash=h.phash)
            from hotline.web.auth import new_token

            analyst_token, admin_token = new_token(), new_token()
            store.users.add("demo-analyst", "analyst", analyst_token)
            store.users.add("demo-admin", "admin", admin_token)
            store.commit()
        say(f"bank: {len(known)} known images (hashes only); 3 hosting providers on loopback; SMTP on {smtp.host}:{smtp.port}")

        runtime = EmbeddedRuntime(system.sessions, system.build_stages())
        runtime.start()
        web_port = free_port()
        server, thread = serve_app(create_app(system), web_port)
        api = httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=10)

        cases = [
            Case("known image, hoster A (NL)", [f"{a}/img/known1.jpg"], S.NOTICE_SENT, expect_detail="abuse@hoster-a.test"),
            Case("page with known image, hoster B (NL)", [f"{b}/gallery.html"], S.NOTICE_SENT, expect_detail="abuse@hoster-b.test"),
            Case("known image, hoster in DE", [f"{de}/k3.jpg"], S.FORWARDED, expect_detail="Partner hotline DE"),
            Case("unknown image → analyst: illegal", [f"{a}/new/4.jpg"], S.ESCALATED, analyst="illegal"),
            Case("unknown image → analyst: not illegal", [f"{b}/holiday.jpg"], S.CLOSED_NOT_ILLEGAL, analyst="not_illegal"),
            Case("resized re-upload of known image (PDQ)", [f"{b}/re/known1-small.jpg"], S.NOTICE_SENT, expect_detail="abuse@hoster-b.test"),
            Case("removed page (HTTP 404)", [f"{a}/deleted.jpg"], S.CLOSED_OFFLINE),
            Case("host that does not resolve", [f"http://gone.nowhere.test:{port}/x.jpg"], S.CLOSED_OFFLINE),
            Case("same URL as the first, spelled differently", [f"http://IMAGES.Hoster-A.test:{port}/img/./known1.jpg#top"], S.NOTICE_SENT, expect_detail="linked"),
            Case("two URLs, one a page in DE", [f"{de}/album.html", f"{b}/gallery.html"], S.FORWARDED),
            Case("ftp URL", ["ftp://files.example.test/x.jpg"], REJECTED),
            Case("no URL at all", [], REJECTED),
        ]
        say(f"submitting {len(cases)} reports through POST /api/v1/reports ...")
        for case in cases:
            case.submitted = time.monotonic()
            r = api.post("/api/v1/reports", json={"urls": case.urls, "description": f"demo: {case.label}"})
            if r.status_code == 422:
                case.state, case.done = "rejected", time.monotonic()
                case.reason = "; ".join(f"{e['field']}: {e['reason']}" for e in r.json()["detail"])
            else:
                r.raise_for_status()
                case.report_id = r.json()["report_id"]
            if case.label.startswith("known image, hoster A"):
                runtime.wait_idle(10)  # so the re-report below finds this item open

        admin = {"Authorization": f"Bearer {admin_token}"}
        analyst = {"Authorization": f"Bearer {analyst_token}"}
        assessed: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pending = False
            for case in cases:
                if case.report_id is None or case.done is not None:
                    continue
                body = api.get(f"/api/v1/reports/{case.report_id}", headers=admin).json()
                if not body["items"]:
                    pending = True
                    continue
                first = body["items"][0]
                case.item_id, case.state, case.reason = first["item_id"], first["state"], first["reason"]
                if case.state == S.AWAITING_ASSESSMENT and case.analyst and case.item_id not in assessed:
                    r = api.post(f"/api/v1/items/{case.item_id}/assessment", headers=analyst,
                                 json={"verdict": case.analyst, "category": "national", "notes": "demo analyst"})
                    r.raise_for_status()
                    assessed.add(case.item_id)
                    pending = True
                    continue
                if case.state in OUTCOMES:
                    case.done = time.monotonic()
                else:
                    pending = True
            if not pending:
                break
            time.sleep(0.05)

        runtime.wait_idle(10)
        api.close()
        server.should_exit = True
        thread.join(5)
        runtime.stop()
        with system.sessions() as session:
            escalations = SqlUnitOfWork(session).escalations.since()
        smtp.stop()
        partner.stop()
        for s in (site_a, site_b, site_de):
            s.stop()
        system.close()

    # --- what happened ---------------------------------------------------------
    notices = [(m["To"], m["X-Hotline-Notice-Id"]) for m in smtp.messages]
    failures = []
    say("")
    say(f"{'#':>2}  {'report':<44} {'outcome':<20} {'after':>8}  detail")
    for i, case in enumerate(cases, 1):
        ok = case.state == case.expect
        after = f"{(case.done - case.submitted) * 1000:.0f} ms" if case.done else "-"
        say(f"{i:>2}  {case.label[:44]:<44} {case.state or 'no outcome':<20} {after:>8}  {case.reason}")
        if not ok:
            failures.append(f"report {i} ({case.label}): expected {case.expect}, got {case.state or 'nothing'}")
    say("")
    say("takedown notices received by the SMTP server:")
    for to, nid in notices:
        say(f"  {nid} -> {to}")
    say("partner forwards received:")
    for fwd in partner.received:
        say(f"  {fwd.body['forward_id']} -> {fwd.body['partner_name']} ({fwd.body['url']})")
    say(f"police escalations: {len(escalations)}" + "".join(f"\n  {e.id} {e.payload['url']}" for e in escalations))

    expected_notices = {"abuse@hoster-a.test": 1, "abuse@hoster-b.test": 2}
    got = {to: sum(1 for t, _ in notices if t == to) for to in expected_notices}
    if got != expected_notices or len(notices) != 3:
        failures.append(f"expected NTD e-mails {expected_notices}, got {[t for t, _ in notices]}")
    if len(partner.received) != 2:
        failures.append(f"expected 2 partner forwards, got {len(partner.received)}")
    if len(escalations) != 1:
        failures.append(f"expected 1 police escalation, got {len(escalations)}")

    counts: dict[str, int] = {}
    for case in cases:
        counts[case.state or "no outcome"] = counts.get(case.state or "no outcome", 0) + 1
    print("counts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    times = sorted((c.done - c.submitted) * 1000 for c in cases if c.done and c.report_id)
    if times:
        print(f"time from submission to outcome: median {times[len(times) // 2]:.0f} ms, max {times[-1]:.0f} ms "
              f"(analyst decisions included); whole demo {time.monotonic() - t0:.1f} s")
    if failures:
        print("DEMO FAILED:")
        for f in failures:
            print("  - " + f)
        return 1
    print("demo OK: every report ended where it should")
    return 0
