"""The narrow look-ups the notify and escalate stages use instead of loading entities
(issue 13, CPU per event): ``items.exists`` and ``reports.from_partners`` answer the same on
the SQL and the in-memory unit of work, and the status updates decided with them are the
ones the partner contract asks for (services.partners.updates)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotline.kernel.ports import UnitOfWork
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.memory import MemoryState, MemoryUnitOfWork
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.items import ItemAccepted, ItemClassified
from schemas.notices import NoticeEvent
from schemas.reports import ReportSubmitted
from services.escalate.partners import PartnerDirectory, PartnerEntry
from services.partners.updates import updates_for
from tests.unit.stagekit import DE, make_item

NO_STATUS = PartnerDirectory({"DE": DE.model_copy(update={"status_endpoint": None})})
WITH_STATUS = PartnerDirectory({"DE": DE})


@pytest.fixture(params=["memory", "sqlite"])
def uow(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UnitOfWork]:
    if request.param == "memory":
        yield MemoryUnitOfWork(MemoryState())
        return
    url = f"sqlite:///{tmp_path / 'lookups.db'}"
    migrate(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        yield SqlUnitOfWork(session)
    engine.dispose()


def report(uow: UnitOfWork, channel: str, country: str | None = None) -> str:
    msg = ReportSubmitted(urls=["http://a.test/"], channel=channel,  # type: ignore[arg-type]
                          partner_country=country, partner_reference="REF-1" if country else None)
    uow.reports.create(msg)
    return msg.report_id


def test_from_partners_keeps_only_partner_reports_in_the_order_asked(uow: UnitOfWork) -> None:
    web = report(uow, "web")
    de = report(uow, "partner", "DE")
    fr = report(uow, "partner", "fr")
    no_country = report(uow, "partner")
    uow.commit()
    found = uow.reports.from_partners([fr, web, "missing", de, no_country, fr])
    assert [(r.id, r.partner_country) for r in found] == [(fr, "FR"), (de, "DE")]
    assert uow.reports.from_partners([]) == []
    assert uow.reports.from_partners([web]) == []


def test_exists_says_whether_an_item_is_stored(uow: UnitOfWork) -> None:
    item_id = make_item(uow, "notice_queued")
    assert uow.items.exists(item_id)
    assert not uow.items.exists("no-such-item")
    fresh = uow.items.create("http://b.test/x.jpg")  # in this unit of work, not committed yet
    assert uow.items.exists(fresh.id)
    assert uow.items.get(item_id) is not None and uow.items.exists(item_id)  # loaded or not


class NoLookups:
    """A unit of work that fails any look-up: a decision that needs none must make none."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"looked up uow.{name}")


EVENTS: list[tuple[str, Any]] = [
    ("items.accepted", ItemAccepted(item_id="i1", url="http://a.test/", report_ids=["r1"])),
    ("notices.events", NoticeEvent(event_id="e1", item_id="i1", kind="sent")),
    ("notices.events", NoticeEvent(event_id="e2", item_id="i1", kind="removed")),
]


@pytest.mark.parametrize(("topic", "message"), EVENTS)
def test_without_a_status_endpoint_no_event_is_looked_up(topic: str, message: Any) -> None:
    at = message.at if isinstance(message, NoticeEvent) else message.accepted_at
    assert updates_for(topic, message, NoLookups(), NO_STATUS, at) == []  # type: ignore[arg-type]
    assert updates_for(topic, message, NoLookups(), PartnerDirectory({}), at) == []  # type: ignore[arg-type]


def test_events_that_name_no_step_are_not_looked_up() -> None:
    other = NoticeEvent(event_id="e3", item_id="i1", kind="reminder")
    assert updates_for("notices.events", other, NoLookups(), WITH_STATUS, other.at) == []  # type: ignore[arg-type]
    classified: Any = ItemClassified.model_construct(item_id="i1", route="notice")
    assert updates_for("items.classified", classified, NoLookups(), WITH_STATUS, other.at) == []  # type: ignore[arg-type]


def test_an_item_with_web_and_partner_reports_updates_only_the_partners(uow: UnitOfWork) -> None:
    item_id = make_item(uow, "notice_sent")
    web, de, fr = report(uow, "web"), report(uow, "partner", "DE"), report(uow, "partner", "FR")
    for n, rid in enumerate((web, de, fr)):
        uow.reports.link_url(rid, n, "http://a.test/", item_id)
    uow.commit()
    fr_partner = PartnerEntry(country="FR", name="Partner FR", endpoint="http://fr.invalid/api")  # no status endpoint
    partners = PartnerDirectory({"DE": DE, "FR": fr_partner})
    sent = NoticeEvent(event_id="e", item_id=item_id, kind="sent")
    out = updates_for("notices.events", sent, uow, partners, sent.at)
    assert [(o.message.report_id, o.message.step) for o in out] == [(de, "acknowledged"), (de, "notice_sent")]  # type: ignore[attr-defined]
    uow.commit()
    assert updates_for("notices.events", sent, uow, partners, sent.at) == []  # recorded: once
    accepted = ItemAccepted(item_id=item_id, url="http://a.test/", report_ids=[web, fr])
    assert updates_for("items.accepted", accepted, uow, partners, sent.at) == []
