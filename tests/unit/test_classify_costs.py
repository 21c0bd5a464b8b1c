"""What keeps classify's per-item cost flat (issue 13), on SQLite: the first sighting of an
image found with a bounded count however many copies exist, and the hosting cache answered
from the process's memory for a short while after it was read from the table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from hotline.kernel.clock import FakeClock, now
from hotline.kernel.states import IllegalTransition
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.hosting_cache import SqlHostingCache
from hotline.storage.memory import MemoryUnitOfWork
from hotline.storage.unit_of_work import SqlUnitOfWork


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Engine, sessionmaker[Session]]]:
    url = f"sqlite:///{tmp_path / 'costs.db'}"
    migrate(url)
    engine = make_engine(url)
    yield engine, make_sessionmaker(engine)
    engine.dispose()


def test_first_sightings_name_the_earliest_other_item_with_a_bounded_count(
    db: tuple[Engine, sessionmaker[Session]],
) -> None:
    _engine, sessions = db
    sha, other_sha, lonely = "a" * 64, "b" * 64, "c" * 64
    with sessions() as session:
        uow = SqlUnitOfWork(session)
        ids = [uow.items.create(f"http://www.gallery.test/{n}.html").id for n in range(8)]
        for n, item_id in enumerate(ids):
            uow.items.add_images(item_id, [(sha, f"http://img.gallery.test/{n}.jpg")])
        uow.items.add_images(ids[3], [(other_sha, "http://img.gallery.test/other.jpg")])
        uow.commit()
        got = uow.items.first_sightings(ids[-1], [sha, other_sha, lonely, sha], count_up_to=5)
    assert got == [(ids[0], sha, "http://img.gallery.test/0.jpg", 5),  # 7 others, counted up to 5
                   (ids[3], other_sha, "http://img.gallery.test/other.jpg", 1)]


def test_the_hosting_cache_answers_from_memory_for_a_while_and_sees_other_writers_after(
    db: tuple[Engine, sessionmaker[Session]],
) -> None:
    engine, sessions = db
    clock = FakeClock()
    ours, theirs = SqlHostingCache(sessions, clock, memory_seconds=60), SqlHostingCache(sessions, clock)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, sql, *a: statements.append(sql))

    theirs.put("dns:h.test", {"addresses": ["192.0.2.1"]}, "dns", 3600)
    first = ours.get("dns:h.test")
    read = len(statements)
    for _ in range(5):
        assert ours.get("dns:h.test") == first
    assert len(statements) == read  # answered from memory: no round trip
    assert first is not None and first.value == {"addresses": ["192.0.2.1"]}

    theirs.put("dns:h.test", {"addresses": ["192.0.2.2"]}, "dns", 3600)  # another process's newer answer
    assert ours.get("dns:h.test") == first  # within memory_seconds: what we read
    clock.advance(61)
    again = ours.get("dns:h.test")
    assert again is not None and again.value == {"addresses": ["192.0.2.2"]}

    ours.put("dns:short.test", {"addresses": ["192.0.2.3"]}, "dns", 10)
    clock.advance(11)
    assert ours.get("dns:short.test") is None  # never past the entry's own expiry


def _open_moved_forward(uow: Any, item_id: str) -> None:
    """A forward of the item that its partner said moved (MO), and one it did not."""
    uow.forwards.open(f"fwd-{item_id}", item_id, "DE", "Partner DE")
    uow.forwards.add_status(f"fwd-{item_id}", "MO", None, "partner-de", now())
    uow.forwards.open(f"fwd-{item_id}-other", item_id, "DE", "Partner DE")
    uow.forwards.add_status(f"fwd-{item_id}-other", "CR", None, "partner-de", now())


@pytest.mark.parametrize("held", [False, True], ids=["fresh-session", "item-held-by-the-session"])
def test_classify_reads_and_writes_its_item_as_get_and_set_state_do(
    db: tuple[Engine, sessionmaker[Session]], held: bool,
) -> None:
    """``work_of`` and ``classify`` (Core statements) against the entity's view: the same columns,
    the partners' MO count of ``moved_count``, the state change with its event, a final state
    freeing the URL; and through the entity when the session already holds it (no stale copy)."""
    _engine, sessions = db
    with sessions() as session:
        uow = SqlUnitOfWork(session)
        item = uow.items.create("http://www.hoster.test/page.html")
        item_id, url = item.id, item.url
        _open_moved_forward(uow, item_id)
        uow.commit()
    with sessions() as session:
        uow = SqlUnitOfWork(session)
        if held:
            assert uow.items.get(item_id) is not None
        work = uow.items.work_of(item_id)
        assert uow.items.work_of("no-such-item") is None
        assert work is not None and work.relookups == uow.forwards.moved_count(item_id) == 1
        assert (work.url, work.state, work.classification) == (url, "received", None)
        uow.items.classify(item_id, work, {"route": "closed_offline"}, ("NL", "Hoster"), "closed_offline",
                           "offline", "classify")
        uow.commit()
    with sessions() as session:
        uow = SqlUnitOfWork(session)
        stored = uow.items.get(item_id)
        assert stored is not None
        assert (stored.state, stored.reason, stored.classification) == ("closed_offline", "offline",
                                                                       {"route": "closed_offline"})
        assert (stored.country, stored.hoster) == ("NL", "Hoster")
        assert [(e.stage, e.kind, e.detail) for e in uow.items.events(item_id)][-1] == (
            "classify", "closed_offline", "offline")
        assert uow.items.open_for_url(url) is None  # final: the URL's slot is free
        again = uow.items.work_of(item_id)
        assert again is not None and again.classification == {"route": "closed_offline"}
        with pytest.raises(IllegalTransition):  # checked as set_state checks
            uow.items.classify(item_id, again, {}, None, "received", "back", "classify")


def test_the_memory_items_read_and_write_the_same() -> None:
    uow = MemoryUnitOfWork()
    item = uow.items.create("http://www.hoster.test/page.html")
    _open_moved_forward(uow, item.id)
    work = uow.items.work_of(item.id)
    assert work is not None and work.relookups == uow.forwards.moved_count(item.id) == 1
    assert uow.items.work_of("no-such-item") is None
    uow.items.classify(item.id, work, {"route": "assessment"}, None, "awaiting_assessment", "unknown", "classify")
    assert (item.state, item.classification, item.country) == ("awaiting_assessment", {"route": "assessment"}, None)
    assert uow.items.events(item.id)[-1].kind == "awaiting_assessment"
