"""What keeps classify's per-item cost flat (issue 13), on SQLite: the first sighting of an
image found with a bounded count however many copies exist, and the hosting cache answered
from the process's memory for a short while after it was read from the table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from hotline.kernel.clock import FakeClock
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.hosting_cache import SqlHostingCache
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
