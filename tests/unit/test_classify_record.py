"""Classify's record transaction on a real database (SQLite): the item read by ``handle`` is
written back only if nobody changed it meanwhile, without reading it again; if another worker
classified it first, its classification stands and is what gets published."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from hotline.kernel.stage import SideEffect
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.facts import HostingFacts
from schemas.items import ItemAccepted, ItemClassified
from services.classify.stage import ClassifyStage


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[SqlUnitOfWork, list[str]]]:
    url = f"sqlite:///{tmp_path / 'record.db'}"
    migrate(url)
    engine = make_engine(url)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda _c, _cur, sql, *_a: statements.append(sql))
    with make_sessionmaker(engine)() as session:
        yield SqlUnitOfWork(session), statements
    engine.dispose()


def _stage() -> ClassifyStage:
    return ClassifyStage(fetcher=None, hash_image=None, match=None, hosting=None,  # type: ignore[arg-type]
                         partner_names={})


def _found(item_id: str, url: str, reason: str) -> ItemClassified:
    return ItemClassified(item_id=item_id, url=url, online=True, hosting=HostingFacts(host="h.test", source="test"),
                          known=False, route="assessment", reason=reason)


def _side_effect(stage: ClassifyStage, uow: SqlUnitOfWork, item_id: str, url: str) -> SideEffect:
    result = stage.handle("items.accepted", ItemAccepted(item_id=item_id, url=url, report_ids=[uuid.uuid4().hex]), uow)
    assert isinstance(result, SideEffect)
    uow.commit()
    return result


def _classify_events(uow: SqlUnitOfWork, item_id: str) -> list[Any]:
    return [e for e in uow.items.events(item_id) if e.stage == "classify"]


def test_the_record_writes_without_reading_the_item_again(store: tuple[SqlUnitOfWork, list[str]]) -> None:
    uow, statements = store
    stage = _stage()
    item = uow.items.create("http://h.test/a.html")
    uow.commit()
    pending = _side_effect(stage, uow, item.id, item.url)
    statements.clear()
    out = pending.done(uow, _found(item.id, item.url, "one image for an analyst"))
    uow.commit()
    assert not [s for s in statements if s.lstrip().upper().startswith("SELECT") and "FROM items" in s], statements
    stored = uow.items.get(item.id)
    assert stored is not None and stored.state == "awaiting_assessment"
    assert (stored.classification or {})["reason"] == "one image for an analyst"
    assert [o.topic for o in out] == ["items.classified"]
    assert len(_classify_events(uow, item.id)) == 1


def test_a_classification_made_meanwhile_stands_and_is_published(store: tuple[SqlUnitOfWork, list[str]]) -> None:
    uow, _ = store
    stage = _stage()
    item = uow.items.create("http://h.test/b.html")
    uow.commit()
    slow = _side_effect(stage, uow, item.id, item.url)
    fast = _side_effect(stage, uow, item.id, item.url)  # another worker, same item (a redelivery)
    fast.done(uow, _found(item.id, item.url, "first"))
    uow.commit()
    out = slow.done(uow, _found(item.id, item.url, "second"))
    uow.commit()
    (published,) = [o.message for o in out if o.topic == "items.classified"]
    assert isinstance(published, ItemClassified) and published.reason == "first"
    stored = uow.items.get(item.id)
    assert stored is not None and (stored.classification or {})["reason"] == "first"
    assert len(_classify_events(uow, item.id)) == 1
