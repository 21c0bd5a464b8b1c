"""The analysts' queue on a real database (SQLite here; the same checks run on PostgreSQL in
tests/integration/test_assessment_leases_pg.py): priority order, leases that exclude other
analysts and expire, concurrent claimers that never share an item, decisions refused (409)
without the lease, the second-analyst confirmation, and the operators' rejections."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from hotline.kernel.messages import InvalidMessage, rejection
from hotline.kernel.states import ItemState
from hotline.runtime.steps import keep_rejections
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.models import AuditLog
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.facts import BankMatch, ImageFacts
from schemas.items import ItemAccepted, ItemClassified
from schemas.reports import ReportSubmitted
from services.assessment.confirmation import decide, second_opinion
from services.assessment.logic import AssessmentRefused
from services.assessment.queue import claim_next, entries, view
from services.operations import rejections
from services.operations.logic import OperationRefused

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
LEASE = 600.0
PRIORITY = {"partner", "police"}
Sessions = sessionmaker[Session]


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[Sessions]:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    migrate(url)
    engine = make_engine(url, immediate=True)  # as the web app's sessions
    yield make_sessionmaker(engine)
    engine.dispose()


def add_item(s: Sessions, n: int, *, new: bool = True, channel: str = "web", age_minutes: int = 0,
             state: ItemState = ItemState.AWAITING_ASSESSMENT) -> str:
    """An item waiting in a queue: its image unknown to the bank (``new``) or a pHash match."""
    with s() as session:
        store = SqlUnitOfWork(session)
        url = f"http://site-{n}.test/{uuid.uuid4().hex[:8]}"
        msg = ReportSubmitted(channel=channel, urls=[url])  # type: ignore[arg-type]
        report = store.reports.create(msg)
        item = store.items.create(url)
        item.first_seen = T0 - timedelta(minutes=age_minutes)
        store.reports.link_url(report.id, 0, url, item.id)
        match = None if new else BankMatch(entry_id=1, signal="phash", distance=8, category="baseline", source="t")
        img = ImageFacts(url=f"{url}/{n}.jpg", sha256=f"{n:064x}", match=match)
        item.classification = ItemClassified(item_id=item.id, url=url, online=True, images=[img], route="assessment",
                                             reason="unknown material").model_dump(mode="json")
        store.items.set_state(item, ItemState.AWAITING_ASSESSMENT, "waiting for an analyst's assessment", "classify")
        if state == ItemState.AWAITING_CONFIRMATION:
            store.items.set_state(item, state, "illegal by first: waiting", "assessment")
            store.assessments.add(item.id, "first", "illegal", "baseline", None)
        store.commit()
        return item.id


def in_store(s: Sessions, fn: Callable[[SqlUnitOfWork], object], commit: bool = True) -> object:
    with s() as session:
        store = SqlUnitOfWork(session)
        try:
            out = fn(store)
        except BaseException:
            store.rollback()
            raise
        if commit:
            store.commit()
        return out


def _next(s: Sessions, analyst: str, at: datetime = T0, queue: str = "assessment",
          filters: dict[str, str] | None = None) -> str | None:
    got = in_store(s, lambda st: claim_next(st, queue, analyst, at, LEASE, PRIORITY, filters or {}))
    assert got is None or isinstance(got, str)
    return got


def test_priority_partners_police_and_new_material_first_then_oldest(sessions: Sessions) -> None:
    old_known = add_item(sessions, 1, new=False, age_minutes=90)
    young_new = add_item(sessions, 2, new=True, age_minutes=5)
    old_new = add_item(sessions, 3, new=True, age_minutes=60)
    partner_known = add_item(sessions, 4, new=False, channel="partner", age_minutes=1)
    police_new = add_item(sessions, 5, new=True, channel="police", age_minutes=2)

    def order(st: SqlUnitOfWork) -> list[str]:
        return [e.item.id for e in entries(st, "assessment", T0, PRIORITY)]

    assert in_store(sessions, order, commit=False) == [police_new, old_new, young_new, partner_known, old_known]
    # "Next" hands them out in that order, one analyst after the other.
    assert [_next(sessions, f"a{i}") for i in range(6)] == [police_new, old_new, young_new, partner_known,
                                                              old_known, None]


def test_filters_and_counts(sessions: Sessions) -> None:
    add_item(sessions, 1, channel="partner")
    web = add_item(sessions, 2)
    add_item(sessions, 3, state=ItemState.AWAITING_CONFIRMATION)
    assert _next(sessions, "ann", filters={"channel": "web"}) == web
    v = in_store(sessions, lambda st: view(st, "assessment", T0, PRIORITY, {"channel": "partner"}), commit=False)
    assert [e.channels for e in v.entries] == [{"partner"}]  # type: ignore[attr-defined]
    assert v.counts == {"assessment": {"total": 2, "free": 1, "claimed": 1},  # type: ignore[attr-defined]
                        "confirmation": {"total": 1, "free": 1, "claimed": 0}}
    assert dict(v.options["channel"]) == {"partner": 1, "web": 1}  # type: ignore[attr-defined]


def test_a_lease_excludes_others_until_it_expires(sessions: Sessions) -> None:
    only = add_item(sessions, 1)
    assert _next(sessions, "ann") == only
    assert _next(sessions, "bob") is None  # ann holds it
    assert _next(sessions, "ann", T0 + timedelta(seconds=30)) == only  # her own: renewed
    # A closed browser: nobody renews; after the lease the item is back in the queue.
    assert _next(sessions, "bob", T0 + timedelta(seconds=LEASE - 1)) is None
    assert _next(sessions, "bob", T0 + timedelta(seconds=30 + LEASE + 1)) == only
    holder = in_store(sessions, lambda st: st.leases.holder(only, T0 + timedelta(seconds=LEASE + 40)))
    assert holder is not None and holder[0] == "bob"  # type: ignore[index]


def concurrent_claims(sessions: Sessions, analysts: int, rounds: int, prefix: str) -> list[list[str]]:
    """``analysts`` threads each ask for the next item ``rounds`` times, all at once."""
    got: list[list[str]] = [[] for _ in range(analysts)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(analysts)

    def work(k: int) -> None:
        try:
            barrier.wait(10)
            for _ in range(rounds):
                item = _next(sessions, f"{prefix}-{k}")
                if item is not None:
                    got[k].append(item)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(analysts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return got


def check_never_shared(sessions: Sessions, items: int = 12, analysts: int = 4) -> None:
    """Fresh items, fresh analysts, all asking at once: no item goes to two of them, and each
    claimed item's lease names the one analyst who got it."""
    prefix = uuid.uuid4().hex[:6]
    ids = [add_item(sessions, n) for n in range(items)]
    got = concurrent_claims(sessions, analysts, rounds=2, prefix=prefix)
    per_analyst = [set(per) for per in got]
    for a in range(analysts):
        assert per_analyst[a], f"analyst {a} got nothing while items were free"
        for b in range(a + 1, analysts):
            assert not per_analyst[a] & per_analyst[b]
        for item in per_analyst[a]:
            holder = in_store(sessions, lambda st, i=item: st.leases.holder(i, T0), commit=False)
            assert holder is not None and holder[0] == f"{prefix}-{a}"  # type: ignore[index]
    assert set().union(*per_analyst) <= set(ids) | set(
        in_store(sessions, lambda st: [i.id for i in st.items.in_state(ItemState.AWAITING_ASSESSMENT)],
                 commit=False))  # type: ignore[arg-type]


def test_two_concurrent_claimers_never_get_the_same_item(sessions: Sessions) -> None:
    check_never_shared(sessions)


def test_a_decision_needs_the_lease(sessions: Sessions) -> None:
    item = add_item(sessions, 1)
    assert _next(sessions, "ann") == item

    def bob_decides(st: SqlUnitOfWork) -> object:
        return decide(st, item, verdict="not_illegal", category=None, analyst="bob", notes=None, hold_seconds=None,
                      second_analyst=False, at=T0 + timedelta(seconds=5), lease_seconds=LEASE)

    with pytest.raises(AssessmentRefused) as refused:
        in_store(sessions, bob_decides)
    assert refused.value.status == 409 and "ann" in refused.value.reason
    in_store(sessions, lambda st: decide(st, item, verdict="not_illegal", category=None, analyst="ann", notes=None,
                                         hold_seconds=None, second_analyst=False, at=T0 + timedelta(seconds=6),
                                         lease_seconds=LEASE))
    state = in_store(sessions, lambda st: (st.items.get(item).state, st.leases.holder(item, T0)))  # type: ignore[union-attr]
    assert state == (ItemState.CLOSED_NOT_ILLEGAL, None)


def test_second_analyst_confirms_or_disagrees(sessions: Sessions) -> None:
    item = add_item(sessions, 1)
    at = T0 + timedelta(seconds=1)

    def first(st: SqlUnitOfWork, who: str = "ann") -> object:
        return decide(st, item, verdict="illegal", category="baseline", analyst=who, notes="looks like it",
                      hold_seconds=None, second_analyst=True, at=at, lease_seconds=LEASE)

    assert in_store(sessions, first) == []  # nothing escalated yet
    assert in_store(sessions, lambda st: st.items.get(item).state) == ItemState.AWAITING_CONFIRMATION  # type: ignore[union-attr]
    # Ann is never handed her own decision; she cannot confirm it either.
    assert _next(sessions, "ann", at, queue="confirmation") is None
    with pytest.raises(AssessmentRefused) as own:
        in_store(sessions, lambda st: second_opinion(st, item, agree=True, analyst="ann", notes=None,
                                                     hold_seconds=None, at=at, lease_seconds=LEASE))
    assert own.value.status == 403
    # Bob disagrees: back to the queue, both decisions on the timeline.
    assert _next(sessions, "bob", at, queue="confirmation") == item
    in_store(sessions, lambda st: second_opinion(st, item, agree=False, analyst="bob", notes="adult",
                                                 hold_seconds=None, at=at, lease_seconds=LEASE))

    def timeline(st: SqlUnitOfWork) -> tuple[str, list[str]]:
        i = st.items.get(item)
        assert i is not None
        return i.state, [e.detail for e in st.items.events(item)]

    state, details = in_store(sessions, timeline)  # type: ignore[misc]
    assert state == ItemState.AWAITING_ASSESSMENT
    assert any("ann" in d and "second analyst" in d for d in details)
    assert "ann decided illegal (baseline); bob disagreed (adult)" in details[-1]
    # Carl decides illegal again, Bob confirms: escalated to the police, confirmation noted.
    in_store(sessions, lambda st: first(st, "carl"))
    out = in_store(sessions, lambda st: second_opinion(st, item, agree=True, analyst="bob", notes=None,
                                                       hold_seconds=None, at=at, lease_seconds=LEASE))
    assert [o.topic for o in out] == ["escalations.police"]  # type: ignore[attr-defined]
    escalation = out[0].message  # type: ignore[index]
    assert escalation.classification.analyst == "bob" and "confirms carl's decision" in escalation.classification.notes
    assert in_store(sessions, lambda st: st.items.get(item).state) == ItemState.ESCALATED  # type: ignore[union-attr]


def test_rejections_are_kept_and_resolved_once(sessions: Sessions) -> None:
    raw = '{"report_id": "r-1", "channel": "web", "urls": ["http://intranet/x"], "description": "d"}'
    parked_raw = ItemAccepted(item_id="i-1", url="http://a.test/", report_ids=["r-0"]).model_dump_json()

    def reject(st: SqlUnitOfWork) -> None:
        bad = InvalidMessage("not_on_internet", "intranet: not on the internet", "r-1")
        parked = InvalidMessage("processing_failed", "stage notify failed 5 times", None)
        keep_rejections(st, [rejection("ingest", "reports.submitted", raw, bad),
                             rejection("classify", "items.accepted", parked_raw, parked)])

    in_store(sessions, reject)
    rows = in_store(sessions, rejections.unresolved, commit=False)
    assert [(r.row.reason_code, r.parked, r.actions) for r in rows] == [  # type: ignore[attr-defined]
        ("processing_failed", True, ("redrive", "dismiss")),
        ("not_on_internet", False, ("resubmit", "dismiss")),
    ]
    parked_id, bad_id = rows[0].row.id, rows[1].row.id  # type: ignore[index]

    def redrive(st: SqlUnitOfWork) -> list[str]:
        rejections.redrive(st, parked_id, operator="olga")
        return [o.topic for o in st.pending]

    assert in_store(sessions, redrive) == ["items.accepted"]  # the parked message, unchanged, to its topic
    out = in_store(sessions, lambda st: rejections.resubmit(st, bad_id, operator="olga",
                                                              urls_text="http://example.com/x\n"))
    (msg,) = [o.message for o in out]  # type: ignore[attr-defined]
    assert msg.urls == ["http://example.com/x"] and msg.channel == "web" and msg.description == "d"
    with pytest.raises(OperationRefused) as again:
        in_store(sessions, lambda st: rejections.resubmit(st, bad_id, operator="olga", urls_text="http://a.com/"))
    assert again.value.status == 409
    audit = in_store(sessions, lambda st: [(a.actor, a.action) for a in st.session.query(AuditLog)], commit=False)
    assert {("olga", "rejection_resubmitted"), ("olga", "parked_redriven")} <= set(audit)  # type: ignore[arg-type]
    assert in_store(sessions, rejections.unresolved, commit=False) == []


def test_known_images_are_listed_not_shown_and_copies_linked() -> None:
    from services.assessment.pages import still_frame, templates

    known = ImageFacts(url="http://a.test/known.jpg", sha256="a" * 64,
                       match=BankMatch(entry_id=7, signal="sha256", distance=0, category="baseline", source="t"))
    weak = ImageFacts(url="http://a.test/weak.jpg", sha256="b" * 64,
                      match=BankMatch(entry_id=8, signal="phash", distance=9, category="baseline", source="t"))
    new = ImageFacts(url="http://a.test/new.gif", sha256="c" * 64, format="GIF")
    item = type("ItemRow", (), {"id": "i-1", "url": "http://a.test/", "state": "awaiting_assessment", "reason": "r",
                                "country": "NL", "hoster": "H", "first_seen": T0, "last_seen": T0})()
    html = templates.env.get_template("item.html").render(
        item=item, classified=None, hosting=None, images=[known, weak, new], events=[], report_ids=[], error=None,
        form={"verdict": "", "category": "national", "notes": ""}, categories=["baseline", "national"],
        caller=None, flash=None, hotline_name="H", nonce="n",
        copies={"c" * 64: [{"item_id": "i-2", "url": "http://b.test/copy.gif", "state": "awaiting_assessment"}]})
    assert 'id="img-0"' not in html and "/images/0" not in html  # known: never fetched, never shown
    assert 'id="img-1"' in html and 'id="img-2"' in html  # a pHash-only match still needs a person
    assert 'id="known-images"' in html and "bank entry 7" in html
    assert 'href="/analyst/items/i-2" class="copy"' in html  # also seen at
    assert 'id="animate-2"' in html and 'id="animate-1"' not in html
    assert still_frame(b"not an image") is None


def test_the_second_analyst_confirms_the_per_image_classification(sessions: Sessions) -> None:
    item = add_item(sessions, 1)
    sha = in_store(sessions, lambda st: st.items.get(item).classification["images"][0]["sha256"])  # type: ignore[union-attr]
    per_image = [{"sha256": sha, "classification": "baseline", "age_group": "infant", "act": "sexual_activity"}]
    at = T0 + timedelta(seconds=1)
    assert in_store(sessions, lambda st: decide(st, item, verdict=None, category=None, analyst="ann", notes=None,
                                                images=per_image, hold_seconds=None, second_analyst=True, at=at,
                                                lease_seconds=LEASE)) == []
    out = in_store(sessions, lambda st: second_opinion(st, item, agree=True, analyst="bob", notes="agreed",
                                                       hold_seconds=None, at=at, lease_seconds=LEASE))
    (escalation,) = [o.message for o in out]  # type: ignore[attr-defined]
    (img,) = escalation.images
    assert img.assessment is not None and img.assessment.classification == "baseline"
    assert img.assessment.xarf  # the X-ARF code, recomputed from the replayed fields
    latest = in_store(sessions, lambda st: st.assessments.latest(item), commit=False)
    assert latest.analyst == "bob" and latest.images[0]["classification"] == "baseline"  # type: ignore[union-attr]
