"""Two ingest workers racing on one URL: ingest leaves a new item's rows for its commit
(``SqlItems.create_deferred``), so the loser's commit fails on ``open_urls``' key and its retry
links the report to the winner's item: still one open item per URL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.models import Item, ReportUrl
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.reports import ReportSubmitted
from services.ingest.stage import IngestStage

URL = "http://a.test/raced.jpg"


@pytest.fixture()
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    migrate(url)
    engine = make_engine(url)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_the_loser_of_a_race_on_a_url_fails_at_commit_and_its_retry_links(sessions: sessionmaker[Session]) -> None:
    stage = IngestStage(operator_hosts=frozenset({"a.test"}))
    first, second = ReportSubmitted(urls=[URL]), ReportSubmitted(urls=[URL])
    with sessions() as s1, sessions() as s2:
        winner, loser = SqlUnitOfWork(s1), SqlUnitOfWork(s2)
        won = stage.handle("reports.submitted", first, winner)
        lost = stage.handle("reports.submitted", second, loser)  # neither sees the other's item yet
        assert [o.topic for o in won] == [o.topic for o in lost] == ["items.accepted"]
        winner.commit()
        with pytest.raises(IntegrityError):
            loser.commit()
        loser.rollback()
    with sessions() as s:
        retry = SqlUnitOfWork(s)
        assert stage.handle("reports.submitted", second, retry) == []  # linked, no new item
        retry.commit()
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Item)) == 1
        links = s.scalars(select(ReportUrl.item_id).where(ReportUrl.report_id.in_([first.report_id, second.report_id])))
        assert len(set(links.all())) == 1
