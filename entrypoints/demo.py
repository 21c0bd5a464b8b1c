"""``hotline demo``: the whole pipeline, embedded, on synthetic data, in about ten seconds.

It starts loopback web sites that play three hosting providers (two in NL,
one in DE where a partner hotline works), a partner endpoint, an SMTP server,
the web app and the five stages; loads a bank with hashes of some generated
images; submits a dozen reports through the public API; acts as an analyst
for the items that need one; then prints what happened to each report, the
counts, and the time from submission to each outcome.

Then, *after the notice*, it runs the follow-up on a simulated clock (a ``FakeClock``
installed for this part of the run only): hoster A takes its image down a few simulated
hours after the notice, hoster B does nothing. The clock moves in steps of a few hours;
at each step the scheduler dispatches the due re-checks and the followup stage fetches the
URLs again, until past the removal deadline. It prints per notified item the time to
removal, or the reminder (and ladder steps) that went out, and the public monitor's
ranking. Exit code 0 means every report ended where it should and the follow-up did what
it should.
"""

from __future__ import annotations

import io
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml
from PIL import Image
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from doubles.loopback import LoopbackSite, PartnerEndpoint, SmtpSink, free_port, serve_app
from hashing.image import hash_image
from hashing.synthetic import generate_photo_like, jpeg_bytes, photo_like_jpeg
from hotline.config import Settings
from hotline.kernel.clock import FakeClock, install
from hotline.kernel.states import REJECTED, ItemState
from hotline.storage.models import Followup
from hotline.storage.unit_of_work import SqlUnitOfWork
from services.followup.logic import words
from services.monitor.figures import human_duration, human_share

if TYPE_CHECKING:
    from collections.abc import Callable

    from hotline.runtime.embedded import EmbeddedRuntime

# Where the demo stops waiting for an item: the outcome of its first step.
S = ItemState
OUTCOMES = {S.NOTICE_SENT, S.FORWARDED, S.ESCALATED, S.CLOSED_OFFLINE, S.CLOSED_NOT_ILLEGAL, REJECTED}

# After the notice, in simulated time. The settings compress only the re-check interval and
# the ladder (so that a few steps of the clock show the whole loop); the removal deadline is
# the real norm, 24 h.
HOUR = 3600
RECHECK_HOURS = 4
DEADLINE_HOURS = 24
LADDER_STEP_HOURS = 4
REMOVED_AT_HOURS = 5  # hoster A takes its image down this long after the notice
CLOCK_STEPS = (4, 5, 8, 12, 16, 20, 24, 28)  # hours after the notice the simulated clock stops at
AUTHORITY = "authority@hotline-demo.test"
HOSTER_A, HOSTER_B = "Hoster A B.V.", "Hoster B B.V."


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
    partner: bool = False  # forwarded to us by the partner hotline DE (POST /api/v1/partner/reports)


@dataclass
class FollowedUp:
    """What happened to one notified item after the notice."""

    item_id: str
    hoster: str
    url: str
    state: str
    reason: str
    checks: int
    first_notice_at: datetime
    steps: list[tuple[datetime, str, str]] = field(default_factory=list)  # (at, kind, detail)


@dataclass
class AfterTheNotice:
    start: datetime
    real_seconds: float
    settled: bool
    items: list[FollowedUp]
    monitor: dict[str, Any]


def _settled(runtime: EmbeddedRuntime, sessions: sessionmaker[Session], clock: FakeClock) -> bool:
    """Nothing left to do at the clock's time: every message consumed, no follow-up waiting to be
    planned, no check due and no reminder or ladder step on its way."""
    if not runtime.idle():
        return False
    with sessions() as session:
        busy = session.scalar(select(Followup.item_id).where(or_(
            Followup.status == "new",
            Followup.next_check_at <= clock.now(),
            Followup.step_pending.is_not(None),
        )).limit(1))
    return busy is None


def _wait_settled(runtime: EmbeddedRuntime, sessions: sessionmaker[Session], clock: FakeClock, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _settled(runtime, sessions, clock):
            return True
        time.sleep(0.02)
    return False


def _after_the_notice(
    runtime: EmbeddedRuntime, sessions: sessionmaker[Session], api: httpx.Client, clock: FakeClock,
    item_ids: list[str], take_down: Callable[[], object],
) -> AfterTheNotice:
    """Move the simulated clock through ``CLOCK_STEPS``, letting the scheduler and the followup
    stage do what is due at each stop; ``take_down`` is hoster A acting on its notice."""
    real = time.monotonic()
    start = clock.now()
    ok = _wait_settled(runtime, sessions, clock, 10)  # the follow-ups are planned
    with sessions() as session:
        # The clock's stops count from the last notice, in whole seconds: whatever is due by then
        # for any of the items is due at that stop.
        last = max(f.first_notice_at for i in item_ids if (f := session.get(Followup, i)) is not None)
    base = last.replace(microsecond=0) + timedelta(seconds=1)
    for hours in CLOCK_STEPS:
        clock.set(max(clock.now(), base + timedelta(hours=hours)))
        if hours == REMOVED_AT_HOURS:
            take_down()
        ok = _wait_settled(runtime, sessions, clock, 10) and ok
    items = []
    with sessions() as session:
        store = SqlUnitOfWork(session)
        for item_id in item_ids:
            f, item = store.followups.get(item_id), store.items.get(item_id)
            assert f is not None and item is not None
            steps = [(e.at, e.kind, e.detail) for e in store.items.events(item_id) if e.kind in ("reminder", "overdue")]
            items.append(FollowedUp(item_id, f.hoster, f.url, item.state, item.reason, f.checks, f.first_notice_at, steps))
    r = api.get("/api/v1/monitor/hosters")
    r.raise_for_status()
    return AfterTheNotice(start, time.monotonic() - real, ok, items, r.json())


def _when(at: datetime, since: datetime) -> str:
    return f"{at:%Y-%m-%d %H:%M} UTC, {words(at - since)} after the notice"


def _report_after_the_notice(
    after: AfterTheNotice, steps_mailed: list[tuple[str, str, str]], stage_errors: dict[str, str],
    say: Callable[[str], None],
) -> list[str]:
    """Print the section "after the notice" and the monitor's ranking; return what went wrong."""
    say("")
    say(f"after the notice (simulated time): the clock starts at {after.start:%Y-%m-%d %H:%M} UTC and stops "
        f"{len(CLOCK_STEPS)} times, up to +{CLOCK_STEPS[-1]} h after the notices ({after.real_seconds:.1f} s real time)")
    say(f"  re-check every {RECHECK_HOURS} h, removal deadline {DEADLINE_HOURS} h, ladder step {LADDER_STEP_HOURS} h; "
        f"{HOSTER_A} takes its image down at +{REMOVED_AT_HOURS} h, {HOSTER_B} does nothing")
    for it in after.items:
        say(f"  {it.hoster:<14} {it.url}")
        if it.state == S.REMOVED:
            say(f"      {it.reason} ({it.checks} re-checks)")
        else:
            reminder = next(((at, d) for at, k, d in it.steps if k == "reminder"), None)
            if reminder is None:
                say(f"      still online after {it.checks} re-checks, no reminder")
            else:
                say(f"      still online ({it.checks} re-checks) → {reminder[1].split(': ', 1)[0]} "
                    f"at {_when(reminder[0], it.first_notice_at)}")
        for at, kind, detail in it.steps:
            if kind != "overdue":
                continue
            if " skipped: " in detail:  # a rung with no known contact: why it was skipped
                say(f"      ladder: {detail} ({_when(at, it.first_notice_at)})")
            else:
                say(f"      ladder: {detail.split(': ', 1)[0]} at {_when(at, it.first_notice_at)}")
    hosters = after.monitor["hosters"]
    deadline = after.monitor["deadline_seconds"]
    say("")
    say("public monitor, GET /api/v1/monitor/hosters (slowest first):")
    say(f"  {'rank':>4}  {'hoster':<15} {'notices':>7} {'removals':>8}  {'median to removal':<17}  "
        f"{'within ' + human_duration(deadline):<11}  {'open past deadline':>18}")
    for h in hosters:
        say(f"  {h['rank']:>4}  {h['hoster']:<15} {h['notices']:>7} {h['removals']:>8}  "
            f"{human_duration(h['median_seconds']):<17}  {human_share(h['share_within_deadline']):<11}  "
            f"{h['open_past_deadline']:>18}")

    failures = []
    if not after.settled:
        failures.append("the follow-up did not settle at every stop of the simulated clock")
    if stage_errors:
        failures.append(f"stages failing at the end: {stage_errors}")
    a_items = [it for it in after.items if it.hoster == HOSTER_A]
    b_items = [it for it in after.items if it.hoster == HOSTER_B]
    # Hoster A: the first report's item and the partner hotline DE's; both taken down.
    if len(a_items) != 2 or any(it.state != S.REMOVED or " after the first notice" not in it.reason for it in a_items):
        failures.append(f"{HOSTER_A}'s item should be removed with a time to removal: "
                        f"{[(it.state, it.reason) for it in a_items]}")
    # One reminder e-mail per notice that was ignored (hoster B has two), counted on the SMTP server
    # by the step's id (item:position); none for what was removed.
    reminders = [(to, fid.rsplit(":", 1)[0]) for to, kind, fid in steps_mailed if kind == "reminder"]
    expected = sorted(("abuse@hoster-b.test", it.item_id) for it in b_items)
    if not b_items or sorted(reminders) != expected:
        failures.append(f"expected exactly one reminder e-mail to abuse@hoster-b.test per notified item of {HOSTER_B} "
                        f"({len(b_items)}) and none to anyone else, got {[to for to, _ in reminders]}")
    ranked = [h["hoster"] for h in hosters]
    if HOSTER_A not in ranked or HOSTER_B not in ranked or ranked.index(HOSTER_B) > ranked.index(HOSTER_A):
        failures.append(f"the monitor should rank {HOSTER_B} before {HOSTER_A}, got {ranked}")
    return failures


@dataclass
class BothWays:
    """The partner hotline DE and us, both ways."""

    forward_id: str
    item_state: str
    partner_status: str  # what GET /api/v1/partner/forwards shows the partner
    answer: dict[str, Any]
    report_id: str | None
    updates: list[tuple[str, str | None, str]]  # (step, ICCAM code, Idempotency-Key) as the partner got them


def _partners_both_ways(
    runtime: EmbeddedRuntime, api: httpx.Client, partner: PartnerEndpoint, token: str, cases: list[Case],
) -> BothWays:
    """The partner hotline DE reports back on our forward (CR: the content is removed there),
    and has had status updates on the report it forwarded to us (acknowledged, notice sent,
    removed: the follow-up saw hoster A take it down)."""
    as_partner = {"Authorization": f"Bearer {token}"}
    forwarded = next(c for c in cases if c.label == "known image, hoster in DE")
    forward_id = f"fwd-{forwarded.item_id}"
    r = api.post(f"/api/v1/partner/forwards/{forward_id}/status", headers=as_partner,
                 json={"action": "CR", "note": "removed by Hoster DE GmbH after our notice"})
    answer = r.json() if r.status_code == 200 else {"error": r.status_code, "detail": r.text}
    theirs = next(c for c in cases if c.partner)
    runtime.wait_idle(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(partner.updates_for(theirs.report_id or "")) < 3:
        time.sleep(0.05)
    mine = api.get("/api/v1/partner/forwards", headers=as_partner).json()
    state: dict[str, Any] = next((f for f in mine["forwards"] if f["forward_id"] == forward_id), {})
    updates = [(u.body["step"], u.body["action"], u.idempotency_key or "") for u in partner.updates_for(theirs.report_id or "")]
    return BothWays(forward_id, str(answer.get("item_state", "?")), str(state.get("partner_status")), answer,
                    theirs.report_id, updates)


def _report_both_ways(both: BothWays, say: Callable[[str], None]) -> list[str]:
    say("")
    say("partner hotlines, both ways:")
    say(f"  Partner hotline DE reports CR on {both.forward_id} (POST /api/v1/partner/forwards/{{id}}/status): "
        f"the item is {both.item_state}; the partner's own list shows {both.partner_status}")
    say(f"  status updates to Partner hotline DE on the report it forwarded to us ({both.report_id}):")
    for step, code, key in both.updates:
        say(f"    {step:<13} ICCAM {code or '-':<4} Idempotency-Key {key}")
    failures = []
    if both.item_state != S.REMOVED or both.partner_status != "CR":
        failures.append(f"the partner's CR should mark its forwarded item removed, got {both.answer}")
    steps = [step for step, _, _ in both.updates]
    if steps != ["acknowledged", "notice_sent", "removed"]:
        failures.append(f"expected status updates acknowledged, notice_sent, removed to the partner, got {steps}")
    return failures


def _summary(after: AfterTheNotice) -> str:
    parts = []
    for h in after.monitor["hosters"]:
        median = f", median {human_duration(h['median_seconds'])}" if h["median_seconds"] is not None else ""
        parts.append(f"{h['rank']}. {h['hoster']} removed {h['removals']} of {h['notices']}{median}, "
                     f"{h['open_past_deadline']} open past the deadline")
    reminded = sum(1 for it in after.items for _, kind, _ in it.steps if kind == "reminder")
    return (f"after the notice (+{CLOCK_STEPS[-1]} h simulated in {after.real_seconds:.1f} s): "
            f"{reminded} reminder{'' if reminded == 1 else 's'}; "
            "monitor: " + "; ".join(parts))


POLICE_OFFICER = "demo-police"


@dataclass
class PoliceRelease:
    """What the demo's police officer did and what came of it."""

    escalation_id: str | None = None
    seen_state: str | None = None
    steps: list[tuple[str, int, str]] = field(default_factory=list)  # (action, HTTP status, state after)
    second_release: int | None = None
    outcome: str | None = None
    notices: int = 0
    notice_to: str | None = None
    item_state: str | None = None
    release_to_notice_ms: float = 0.0
    error: str | None = None


def _police_release(
    api: httpx.Client, police: dict[str, str], admin: dict[str, str], smtp: SmtpSink, runtime: EmbeddedRuntime,
    item_id: str | None,
) -> PoliceRelease:
    """The police liaison through the API: see the escalation, mark it received, hold it, release
    it; then wait for the NTD at the SMTP server (sent by escalate and notify)."""
    result = PoliceRelease()
    if item_id is None:
        result.error = "no item was confirmed by the analyst"
        return result
    listed = api.get("/api/v1/escalations", headers=police).json()["escalations"]
    mine = next((e for e in listed if e["item_id"] == item_id), None)
    if mine is None:
        result.error = f"the escalation of {item_id} is not in GET /api/v1/escalations"
        return result
    result.escalation_id, result.seen_state = mine["escalation_id"], mine["state"]
    base = f"/api/v1/escalations/{result.escalation_id}"
    released_at = time.monotonic()
    for action, body in (("received", None), ("hold", {"reason": "demo: investigation, keep it online for now"}),
                         ("release", None)):
        released_at = time.monotonic()
        r = api.post(f"{base}/{action}", headers=police, json=body)
        result.steps.append((action, r.status_code, r.json().get("state", r.json().get("detail", ""))))
    result.second_release = api.post(f"{base}/release", headers=police).status_code
    notice_id = f"ntd-{item_id}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        arrived = [m for m in smtp.messages if m["X-Hotline-Notice-Id"] == notice_id]
        if arrived:
            result.release_to_notice_ms = (time.monotonic() - released_at) * 1000
            result.notice_to = arrived[0]["To"]
            break
        time.sleep(0.02)
    runtime.wait_idle(10)
    result.notices = sum(1 for m in smtp.messages if m["X-Hotline-Notice-Id"] == notice_id)
    after = next(e for e in api.get("/api/v1/escalations", headers=police).json()["escalations"]
                 if e["item_id"] == item_id)
    result.outcome = after["outcome"]
    report = api.get(f"/api/v1/reports/{after['report_ids'][0]}", headers=admin) if after["report_ids"] else None
    if report is not None and report.status_code == 200:
        result.item_state = next((i["state"] for i in report.json()["items"] if i["item_id"] == item_id), None)
    return result


def _report_police(police: PoliceRelease, say: Callable[[str], None]) -> list[str]:
    """Print what the police did and what came of it; return what went wrong."""
    say("")
    say("the police decide when (GET /api/v1/escalations, POST …/received, …/hold, …/release):")
    if police.error:
        return [f"police release: {police.error}"]
    say(f"  {police.escalation_id}: seen as {police.seen_state} by {POLICE_OFFICER}")
    for action, status, state in police.steps:
        say(f"  POST {action:<8} -> HTTP {status}, {state}")
    say(f"  POST release again -> HTTP {police.second_release} (released is final)")
    say(f"  outcome: {police.outcome}")
    say(f"  NTD at the SMTP server: {police.notices} e-mail to {police.notice_to}, "
        f"{police.release_to_notice_ms:.0f} ms after the release; item {police.item_state}")
    failures = []
    if [(a, st) for a, st, _ in police.steps] != [("received", 200), ("hold", 200), ("release", 200)]:
        failures.append(f"police actions should all succeed: {police.steps}")
    if police.second_release != 409:
        failures.append(f"a second release should be refused with 409, got {police.second_release}")
    if police.notices != 1 or police.notice_to != "abuse@hoster-a.test":
        failures.append(f"expected exactly one NTD to abuse@hoster-a.test after the police release, got "
                        f"{police.notices} to {police.notice_to}")
    if police.item_state != S.NOTICE_SENT:
        failures.append(f"the released item should be notice_sent, is {police.item_state}")
    if not (police.outcome or "").startswith("notice ntd-"):
        failures.append(f"the escalation's outcome should name its notice: {police.outcome}")
    return failures


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
    from hotline.runtime.periodic import PeriodicRunner

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
        site_a.add("/img/de-case.jpg", "image/jpeg", known[1])  # the case the partner hotline DE sends us

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
            {"country": "DE", "name": "Partner hotline DE", "endpoint": partner.url, "token_env": "HOTLINE_PARTNER_DE_TOKEN",
             "status_endpoint": partner.status_url},
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
            # after the notice, in simulated seconds (see CLOCK_STEPS); the scheduler looks for due
            # work every 50 ms of real time
            recheck_seconds=RECHECK_HOURS * HOUR,
            recheck_jitter=0,
            recheck_confirm_seconds=600,
            removal_deadline_seconds=DEADLINE_HOURS * HOUR,
            ladder_step_seconds=LADDER_STEP_HOURS * HOUR,
            authority_email=AUTHORITY,
            followup_tick_seconds=0.05,
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
            police_token = new_token()
            store.users.add("demo-police", "police", police_token)
            partner_account_token = new_token()  # the partner hotline DE's account with us
            store.users.add("demo-partner-de", "partner", partner_account_token, "DE")
            store.commit()
        say(f"bank: {len(known)} known images (hashes only); 3 hosting providers on loopback; SMTP on {smtp.host}:{smtp.port}")

        # With the dispatcher that retries forwards and partner status updates (escalate's periodic task).
        runtime = EmbeddedRuntime(system.sessions, system.build_stages(), periodic=[system.build_delivery_dispatcher()])
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
            Case("local network name, not on the internet", [f"http://intranet:{port}/x.jpg"], REJECTED),
            Case("same URL as the first, spelled differently", [f"http://IMAGES.Hoster-A.test:{port}/img/./known1.jpg#top"], S.NOTICE_SENT, expect_detail="linked"),
            Case("two URLs, one a page in DE", [f"{de}/album.html", f"{b}/gallery.html"], S.FORWARDED),
            Case("ftp URL", ["ftp://files.example.test/x.jpg"], REJECTED),
            Case("no URL at all", [], REJECTED),
            Case("forwarded to us by the partner hotline DE", [f"{a}/img/de-case.jpg"], S.NOTICE_SENT,
                 expect_detail="abuse@hoster-a.test", partner=True),
        ]
        say(f"submitting {len(cases)} reports through POST /api/v1/reports ...")
        for case in cases:
            case.submitted = time.monotonic()
            if case.partner:
                r = api.post("/api/v1/partner/reports", headers={"Authorization": f"Bearer {partner_account_token}"},
                             json={"urls": case.urls, "partner_reference": "DE-DEMO-1", "description": case.label})
            else:
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

        # --- after the notice, on a simulated clock ---------------------------------------
        notified = list(dict.fromkeys(c.item_id for c in cases if c.state == S.NOTICE_SENT and c.item_id))
        # The follow-up scheduler (in ``hotline serve`` a periodic task of the runtime from the start)
        # starts with the simulated clock: on the real one nothing would be due for hours.
        clock = FakeClock(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1))
        previous = install(clock)
        scheduler = PeriodicRunner(system.sessions, system.build_scheduler()).start()
        try:
            follow = _after_the_notice(runtime, system.sessions, api, clock, notified,
                                      take_down=lambda: (site_a.remove("/img/known1.jpg"),
                                                         site_a.remove("/img/de-case.jpg")))
        finally:
            scheduler.stop()
            install(previous)
        # The police release the new material (after the follow-up on the simulated clock, so
        # its notice is not part of that story): hold, then release, then the NTD arrives.
        confirmed = next((c.item_id for c in cases if c.analyst == "illegal" and c.item_id), None)
        police = _police_release(api, {"Authorization": f"Bearer {police_token}"}, admin, smtp, runtime, confirmed)
        both_ways = _partners_both_ways(runtime, api, partner, partner_account_token, cases)
        stage_errors = dict(runtime.errors)
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
    notices = [(m["To"], m["X-Hotline-Notice-Id"]) for m in smtp.messages if m["X-Hotline-Notice-Id"]]
    steps_mailed = [(m["To"], m["X-Hotline-Followup-Step"], m["X-Hotline-Followup-Id"]) for m in smtp.messages
                    if m["X-Hotline-Followup-Step"]]
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

    failures += _report_police(police, say)

    # Hoster A: the known image's notice, the police-released one of the new material and the
    # one for the partner's report.
    expected_notices = {"abuse@hoster-a.test": 3, "abuse@hoster-b.test": 2}
    got = {to: sum(1 for t, _ in notices if t == to) for to in expected_notices}
    if got != expected_notices or len(notices) != 5:
        failures.append(f"expected NTD e-mails {expected_notices}, got {[t for t, _ in notices]}")
    if len(partner.received) != 2:
        failures.append(f"expected 2 partner forwards, got {len(partner.received)}")
    if len(escalations) != 1:
        failures.append(f"expected 1 police escalation, got {len(escalations)}")

    failures += _report_after_the_notice(follow, steps_mailed, stage_errors, say)
    failures += _report_both_ways(both_ways, say)

    counts: dict[str, int] = {}
    for case in cases:
        counts[case.state or "no outcome"] = counts.get(case.state or "no outcome", 0) + 1
    print("counts: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    times = sorted((c.done - c.submitted) * 1000 for c in cases if c.done and c.report_id)
    if times:
        print(f"time from submission to outcome: median {times[len(times) // 2]:.0f} ms, max {times[-1]:.0f} ms "
              f"(analyst decisions included); whole demo {time.monotonic() - t0:.1f} s")
    print(_summary(follow))
    if failures:
        print("DEMO FAILED:")
        for f in failures:
            print("  - " + f)
        return 1
    print(f"police: {police.escalation_id} held, released by {POLICE_OFFICER}; its NTD reached "
          f"{police.notice_to} {police.release_to_notice_ms:.0f} ms after the release")
    print("demo OK: every report ended where it should, the follow-up did what it should, "
          "and the police release led to the NTD")
    return 0
