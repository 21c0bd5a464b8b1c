"""The bank on a real PostgreSQL: COPY import, matcher streamed from the database, snapshot.

Each test gets its own database (created and dropped here), so runs and
tests sharing one server do not see each other's rows.
"""

from __future__ import annotations

import csv
import io
import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.models import BankEntry
from hotline.storage.unit_of_work import SqlUnitOfWork
from services.bank.bank import CSV_COLUMNS, Bank, export_csv, import_csv, retire

pytestmark = pytest.mark.integration

RNG = random.Random(11)


def hx(nbytes: int) -> str:
    return RNG.randbytes(nbytes).hex()


def flip(hexcode: str, k: int) -> str:
    n = int(hexcode, 16)
    for b in RNG.sample(range(len(hexcode) * 4), k):
        n ^= 1 << b
    return f"{n:0{len(hexcode)}x}"


def csv_text(header: list[str], rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    w.writerows([r.get(c, "") for c in header] for r in rows)
    return out.getvalue()


@pytest.fixture
def pg_sessions(pg_url: str) -> Iterator[sessionmaker[Session]]:
    """A fresh, migrated database of its own on the test server."""
    name = f"bank_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    engine = None
    try:
        migrate(url)
        engine = make_engine(url)
        yield make_sessionmaker(engine)
    finally:
        if engine is not None:
            engine.dispose()
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_import_and_match_on_postgres(pg_sessions: sessionmaker[Session], tmp_path: Path) -> None:
    rows = [
        {
            "md5": hx(16),
            "sha256": hx(32),
            "pdq": hx(32),
            "phash": hx(8),
            "category": "national",
            "source": "p",
        }
        for _ in range(2_500)
    ]
    # Characters COPY's text format must escape survive the trip.
    rows[0]["source"] = "tab\there, back\\slash, new\nline"
    text = csv_text(list(CSV_COLUMNS), rows)
    text += f"{hx(15)},,,,,baseline,x\n"  # md5 one byte short
    text += ",,,,,baseline,x\n"  # no hash
    with pg_sessions() as s:
        store = SqlUnitOfWork(s)
        added, errors = import_csv(io.StringIO(text), store, batch_size=1_000)
        store.commit()
    assert added == 2_500
    assert len(errors) == 2
    # Line numbers are physical lines: row 1 spans two (its source has a newline).
    assert errors[0].startswith("line 2503: column md5:")
    assert errors[1].startswith("line 2504: no hash")

    with pg_sessions() as s:
        first = (
            s.get(BankEntry, 1) or s.scalars(sa.select(BankEntry).order_by(BankEntry.id)).first()
        )
        assert first is not None and first.source == rows[0]["source"]
        assert first.added_at.tzinfo is not None

    bank = Bank(pg_sessions, index_dir=tmp_path / "idx", refresh_seconds=0, verify_seconds=None)
    assert bank.load() == "database"
    for r in rows[:200]:
        hit = bank.match(pdq=flip(r["pdq"], 25))
        assert hit is not None and hit.category == "national"
        assert bank.match(md5=r["md5"]) is not None
        assert bank.match(phash=flip(r["phash"], 6)) is not None

    # Retire, add, and start again from the snapshot.
    with pg_sessions() as s:
        ids = s.scalars(sa.select(BankEntry.id).order_by(BankEntry.id).limit(3)).all()
        assert retire(SqlUnitOfWork(s), ids[1], "withdrawn", "test")
        late = SqlUnitOfWork(s).bank.add(category="baseline", source="late", sha256=hx(32))
        s.commit()
    again = Bank(pg_sessions, index_dir=tmp_path / "idx", refresh_seconds=0, verify_seconds=None)
    assert again.load() == "snapshot"
    assert again.match(md5=rows[1]["md5"]) is None
    assert again.match(md5=rows[2]["md5"]) is not None
    assert again.match(sha256=late.sha256) is not None
    assert again.verify() == 0

    out = io.StringIO()
    with pg_sessions() as s:
        assert export_csv(SqlUnitOfWork(s), out) == 2_500
    assert out.getvalue().count("\n") >= 2_501


def test_copy_import_is_one_transaction(pg_sessions: sessionmaker[Session]) -> None:
    rows = [{"sha256": hx(32)} for _ in range(30)]
    with pg_sessions() as s:
        added, errors = import_csv(io.StringIO(csv_text(["sha256"], rows)), SqlUnitOfWork(s), batch_size=7)
        assert (added, errors) == (30, [])
        s.rollback()
    with pg_sessions() as s:
        assert s.scalar(sa.select(sa.func.count(BankEntry.id))) == 0
