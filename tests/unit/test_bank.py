"""The bank: CSV import/export, retirement, and the matcher snapshot with incremental catch-up.

SQLite in ``tmp_path``; the same code runs on PostgreSQL in
``tests/integration/test_bank_postgres.py``.
"""

from __future__ import annotations

import csv
import io
import json
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text, update
from sqlalchemy.orm import Session, sessionmaker

from hashing.matcher import BankMatcher, BankRecord
from hashing.snapshot import CompactBankMatcher, current_snapshot, load_snapshot, read_manifest
from hotline.config import Settings
from hotline.kernel.clock import now
from hotline.storage.engine import make_engine, make_sessionmaker, migrate
from hotline.storage.models import BankEntry
from hotline.storage.unit_of_work import SqlUnitOfWork
from services.bank.bank import CSV_COLUMNS, Bank, export_csv, import_csv, retire

RNG = random.Random(7)


def hx(nbytes: int) -> str:
    return RNG.randbytes(nbytes).hex()


def flip(hexcode: str, k: int) -> str:
    """``hexcode`` with ``k`` distinct bits flipped."""
    n = int(hexcode, 16)
    bits = len(hexcode) * 4
    for b in RNG.sample(range(bits), k):
        n ^= 1 << b
    return f"{n:0{len(hexcode)}x}"


def entry(**kw: str) -> dict[str, str]:
    return {"md5": hx(16), "sha1": hx(20), "sha256": hx(32), "pdq": hx(32), "phash": hx(8), **kw}


def csv_text(header: list[str], rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    w.writerows([r.get(c, "") for c in header] for r in rows)
    return out.getvalue()


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    url = f"sqlite:///{tmp_path / 'bank.db'}"
    migrate(url)
    return make_sessionmaker(make_engine(url))


@pytest.fixture
def do_import(sessions: sessionmaker[Session]) -> Callable[..., tuple[int, list[str]]]:
    def run(text_: str, **kw: object) -> tuple[int, list[str]]:
        with sessions() as s:
            store = SqlUnitOfWork(s)
            result = import_csv(io.StringIO(text_), store, **kw)  # type: ignore[arg-type]
            store.commit()
        return result

    return run


def make_bank(sessions: sessionmaker[Session], index_dir: Path | None = None, **kw: object) -> Bank:
    kw.setdefault("refresh_seconds", 0)
    kw.setdefault("verify_seconds", None)
    return Bank(sessions, index_dir=index_dir, **kw)  # type: ignore[arg-type]


def add_entries(
    sessions: sessionmaker[Session], rows: list[dict[str, str]], category: str = "national"
) -> list[int]:
    with sessions() as s:
        store = SqlUnitOfWork(s)
        ids = [store.bank.add(category=category, source="analyst", **r).id for r in rows]
        store.commit()
    return ids


def answers(bank: Bank, queries: list[tuple[str, str]]) -> list[list[tuple[int, int, str, str]]]:
    return [
        [(h.entry_id, h.distance, h.category, h.source) for h in bank.matcher.lookup(kind, value)]
        for kind, value in queries
    ]


# --------------------------------------------------------------------------- import


@pytest.mark.parametrize(
    "header",
    [
        ["md5"],
        ["phash", "sha256"],
        ["pdq", "category", "source"],
        ["source", "sha1", "md5", "category"],
        list(CSV_COLUMNS),
    ],
)
def test_import_any_subset_of_hash_columns(
    header: list[str],
    do_import: Callable[..., tuple[int, list[str]]],
    sessions: sessionmaker[Session],
) -> None:
    rows = [entry(category="national", source="partner-x") for _ in range(30)]
    added, errors = do_import(
        csv_text(header, rows), default_category="baseline", default_source="file.csv"
    )
    assert (added, errors) == (30, [])
    bank = make_bank(sessions)
    for i, r in enumerate(rows, start=1):
        kind = next(c for c in header if c in ("md5", "sha1", "sha256", "pdq", "phash"))
        hit = bank.match(**{kind: r[kind]})
        assert hit is not None and hit.entry_id == i
        assert hit.category == ("national" if "category" in header else "baseline")
        assert hit.source == ("partner-x" if "source" in header else "file.csv")


def test_import_normalises_case_and_whitespace(
    do_import: Callable[..., tuple[int, list[str]]], sessions: sessionmaker[Session]
) -> None:
    md5 = hx(16)
    added, errors = do_import(f"MD5 , Category\n {md5.upper()} , national \n")
    assert (added, errors) == (1, [])
    with sessions() as s:
        row = s.get(BankEntry, 1)
        assert row is not None and (row.md5, row.category) == (md5, "national")


def test_bad_rows_reported_with_line_and_column(
    do_import: Callable[..., tuple[int, list[str]]], sessions: sessionmaker[Session]
) -> None:
    good = [entry() for _ in range(5)]
    text_ = (
        "md5,pdq,phash,category\n"
        f"{good[0]['md5']},,,\n"  # line 2 ok
        f"{good[1]['md5'][:-1]},,,\n"  # line 3: md5 too short
        f",{good[1]['pdq'][:-1]}g,,\n"  # line 4: not hex
        ",,,national\n"  # line 5: no hash at all
        f"{good[2]['md5']},,\n"  # line 6: too few fields
        "\n"  # line 7: blank, not a row
        f",,{good[3]['phash']},{'x' * 40}\n"  # line 8: category too long
        f",{good[4]['pdq']},{good[4]['phash']},\n"  # line 9 ok
    )
    added, errors = do_import(text_)
    assert added == 2
    assert len(errors) == 5
    assert errors[0].startswith("line 3: column md5: ") and "32 hex characters" in errors[0]
    assert errors[1].startswith("line 4: column pdq: ") and "'g'" in errors[1]
    assert errors[2].startswith("line 5: no hash")
    assert errors[3].startswith("line 6: expected 4 fields")
    assert errors[4].startswith("line 8: column category: longer than 32")
    with sessions() as s:
        assert s.scalar(text("select count(*) from bank_entries")) == 2


@pytest.mark.parametrize(
    ("text_", "message"),
    [
        ("", "the file is empty"),
        ("md5,colour\nabc,red\n", "unknown column(s) colour"),
        ("category,source\nx,y\n", "no hash column"),
        ("md5,md5\n", "appear more than once"),
    ],
)
def test_bad_header_refuses_the_file(
    text_: str, message: str, do_import: Callable[..., tuple[int, list[str]]]
) -> None:
    added, errors = do_import(text_)
    assert added == 0 and len(errors) == 1 and message in errors[0]


def test_import_in_many_batches(
    do_import: Callable[..., tuple[int, list[str]]], sessions: sessionmaker[Session]
) -> None:
    rows = [entry() for _ in range(2_345)]
    seen: list[int] = []
    added, errors = do_import(
        csv_text(["sha256", "phash"], rows), batch_size=500, progress=seen.append
    )
    assert (added, errors) == (2_345, [])
    assert sum(seen) == 2_345
    bank = make_bank(sessions)
    assert bank.state is None and len(bank.matcher) == 0  # loads lazily on the first match
    assert bank.match(sha256=rows[-1]["sha256"]) is not None
    assert len(bank.matcher) == 2_345


def test_import_is_one_transaction(sessions: sessionmaker[Session]) -> None:
    """Bulk inserts go through the session's connection: no commit, no rows."""
    with sessions() as s:
        added, _ = import_csv(
            io.StringIO(csv_text(["md5"], [entry() for _ in range(50)])), SqlUnitOfWork(s), batch_size=10
        )
        assert added == 50
        assert s.scalar(text("select count(*) from bank_entries")) == 50
        s.rollback()
    with sessions() as s:
        assert s.scalar(text("select count(*) from bank_entries")) == 0


def test_export_round_trip(
    tmp_path: Path, do_import: Callable[..., tuple[int, list[str]]], sessions: sessionmaker[Session]
) -> None:
    rows = [
        entry(
            category=RNG.choice(["baseline", "national"]),
            source=RNG.choice(["a", "b, with comma", 'q"uote']),
        )
        for _ in range(50)
    ]
    for r in rows[::3]:
        r["sha1"] = ""
    do_import(csv_text(list(CSV_COLUMNS), rows))
    out = io.StringIO()
    with sessions() as s:
        assert export_csv(SqlUnitOfWork(s), out) == 50
    first = out.getvalue()

    url2 = f"sqlite:///{tmp_path / 'other.db'}"
    migrate(url2)
    sessions2 = make_sessionmaker(make_engine(url2))
    with sessions2() as s:
        store = SqlUnitOfWork(s)
        assert import_csv(io.StringIO(first), store) == (50, [])
        store.commit()
    out2 = io.StringIO()
    with sessions2() as s:
        export_csv(SqlUnitOfWork(s), out2)
    assert out2.getvalue() == first


# --------------------------------------------------------------------------- retire


def test_retire_stops_matching_and_keeps_the_reason(
    do_import: Callable[..., tuple[int, list[str]]], sessions: sessionmaker[Session]
) -> None:
    rows = [entry() for _ in range(10)]
    do_import(csv_text(list(CSV_COLUMNS), rows))
    bank = make_bank(sessions)
    assert bank.match(pdq=flip(rows[3]["pdq"], 20)) is not None
    with sessions() as s:
        store = SqlUnitOfWork(s)
        assert retire(store, 4, "false positive: stock photo", "analyst-1")
        assert not retire(store, 4, "again", "analyst-1")  # already retired
        assert not retire(store, 999, "no such entry", "analyst-1")
        store.commit()
    bank.refresh()
    for kind in ("md5", "sha1", "sha256", "pdq", "phash"):
        assert bank.match(**{kind: rows[3][kind]}) is None
    assert bank.match(md5=rows[4]["md5"]) is not None
    with sessions() as s:
        row = s.get(BankEntry, 4)
        assert row is not None and row.retired_at is not None
        assert row.retired_reason == "false positive: stock photo"
        out, all_ = io.StringIO(), io.StringIO()
        assert export_csv(SqlUnitOfWork(s), out) == 9
        assert export_csv(SqlUnitOfWork(s), all_, include_retired=True) == 10


def test_bank_retire_is_immediate_in_this_process(
    do_import: Callable[..., tuple[int, list[str]]], sessions: sessionmaker[Session]
) -> None:
    rows = [entry() for _ in range(3)]
    do_import(csv_text(["md5"], rows))
    bank = make_bank(sessions, refresh_seconds=3600)
    assert bank.match(md5=rows[0]["md5"]) is not None
    with sessions() as s:
        store = SqlUnitOfWork(s)
        assert retire(store, 1, "withdrawn by partner", "admin")
        store.commit()
    bank.forget([1])
    assert bank.match(md5=rows[0]["md5"]) is None


# --------------------------------------------------------------------------- snapshot


def test_snapshot_gives_identical_answers(
    tmp_path: Path, do_import: Callable[..., tuple[int, list[str]]], sessions: sessionmaker[Session]
) -> None:
    rows = [
        entry(category=RNG.choice(["baseline", "national"]), source=f"s{RNG.randrange(5)}")
        for _ in range(400)
    ]
    for r in rows[::4]:
        r["md5"] = r["pdq"] = ""
    do_import(csv_text(list(CSV_COLUMNS), rows))
    with sessions() as s:
        retire(SqlUnitOfWork(s), 10, "test", "t")
        s.commit()
    built = make_bank(sessions, tmp_path / "idx")
    assert built.load() == "database"
    assert current_snapshot(tmp_path / "idx") is not None
    queries: list[tuple[str, str]] = []
    for r in rows[:120]:
        queries += [(k, r[k]) for k in ("md5", "sha1", "sha256") if r[k]]
        if r["pdq"]:
            queries.append(("pdq", flip(r["pdq"], RNG.randrange(32))))
            queries.append(("pdq", flip(r["pdq"], 40)))  # outside the radius
        queries.append(("phash", flip(r["phash"], RNG.randrange(9))))
    queries += [("sha256", hx(32)), ("pdq", hx(32)), ("phash", hx(8))]
    expected = answers(built, queries)
    assert any(expected) and not all(expected)

    for mmap in (True, False):
        loaded = make_bank(sessions, tmp_path / "idx", mmap=mmap)
        assert loaded.load() == "snapshot"
        assert answers(loaded, queries) == expected
        assert len(loaded.matcher) == len(built.matcher) == 399


def test_incremental_update_after_snapshot(
    tmp_path: Path, do_import: Callable[..., tuple[int, list[str]]], sessions: sessionmaker[Session]
) -> None:
    rows = [entry() for _ in range(200)]
    do_import(csv_text(list(CSV_COLUMNS), rows))
    make_bank(sessions, tmp_path / "idx").load()  # writes the snapshot
    snap = current_snapshot(tmp_path / "idx")

    late = [entry() for _ in range(5)]
    late_ids = add_entries(sessions, late)
    with sessions() as s:
        retire(SqlUnitOfWork(s), 7, "withdrawn", "t")
        s.commit()

    bank = make_bank(sessions, tmp_path / "idx")
    assert bank.load() == "snapshot"
    assert current_snapshot(tmp_path / "idx") == snap  # a few changes: no re-save
    assert bank.state is not None and bank.state.changes == 6
    for i, r in zip(late_ids, late, strict=True):
        hit = bank.match(pdq=flip(r["pdq"], 5))
        assert hit is not None and (hit.entry_id, hit.category) == (i, "national")
    assert bank.match(sha256=rows[6]["sha256"]) is None

    # Changes while running: refresh picks them up.
    later = entry()
    (later_id,) = add_entries(sessions, [later])
    with sessions() as s:
        retire(SqlUnitOfWork(s), late_ids[0], "duplicate", "t")
        s.commit()
    bank.refresh()
    assert bank.match(phash=later["phash"]).entry_id == later_id  # type: ignore[union-attr]
    assert bank.match(pdq=late[0]["pdq"]) is None
    assert bank.match(md5=rows[0]["md5"]) is not None


def test_a_match_while_the_snapshot_catches_up_waits_for_the_changes_since(
    tmp_path: Path,
    do_import: Callable[..., tuple[int, list[str]]],
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Classify matches on several threads at once. The first match loads the snapshot and
    then applies what was added since; a second thread must not match against the bare
    snapshot meanwhile (it would route known material to an analyst: seen on Kafka, with two
    classify processes, as items of a known batch ending ``awaiting_assessment``)."""
    do_import(csv_text(list(CSV_COLUMNS), [entry() for _ in range(50)]))
    make_bank(sessions, tmp_path / "idx").load()  # writes the snapshot
    late = [entry() for _ in range(3)]
    add_entries(sessions, late)

    bank = make_bank(sessions, tmp_path / "idx")
    catching_up, go_on = threading.Event(), threading.Event()
    real_catch_up = bank._catch_up

    def slow_catch_up(*args: Any) -> int:
        catching_up.set()
        assert go_on.wait(10)
        return real_catch_up(*args)

    monkeypatch.setattr(bank, "_catch_up", slow_catch_up)
    hits: dict[str, object] = {}

    def match(name: str, row: dict[str, str]) -> None:
        hits[name] = bank.match(sha256=row["sha256"])

    first = threading.Thread(target=match, args=("first", late[0]))
    first.start()
    assert catching_up.wait(10)
    second = threading.Thread(target=match, args=("second", late[1]))
    second.start()
    second.join(0.3)
    assert second.is_alive(), f"matched before the bank had caught up: {hits.get('second')}"
    go_on.set()
    first.join(10)
    second.join(10)
    assert hits["first"] is not None and hits["second"] is not None, hits
    assert bank.loaded_from == "snapshot"


def test_resave_after_many_changes(
    tmp_path: Path, do_import: Callable[..., tuple[int, list[str]]], sessions: sessionmaker[Session]
) -> None:
    do_import(csv_text(["sha256", "pdq"], [entry() for _ in range(100)]))
    make_bank(sessions, tmp_path / "idx").load()
    first = current_snapshot(tmp_path / "idx")
    assert first is not None and read_manifest(first)["info"]["max_id"] == 100

    more = [entry() for _ in range(300)]
    do_import(csv_text(["sha256", "pdq"], more))
    bank = make_bank(sessions, tmp_path / "idx", resave_min=100, resave_fraction=0.1)
    assert bank.load() == "snapshot"
    second = current_snapshot(tmp_path / "idx")
    assert second is not None and second != first and not first.exists()
    manifest = read_manifest(second)
    assert manifest["info"]["max_id"] == 400 and manifest["live"] == 400
    assert bank.state is not None and bank.state.changes == 0

    again = make_bank(sessions, tmp_path / "idx")
    assert again.load() == "snapshot" and again.state is not None and again.state.changes == 0
    assert again.match(pdq=flip(more[-1]["pdq"], 31)) is not None

    # ...and while running: the background maintenance re-saves.
    do_import(csv_text(["sha256"], [entry() for _ in range(150)]))
    running = make_bank(
        sessions, tmp_path / "idx", resave_min=100, resave_fraction=0.1, verify_seconds=3600
    )
    running.load()
    assert running.state is not None and running.state.changes == 0  # re-saved at start (150 > 100)
    do_import(csv_text(["sha256"], [entry() for _ in range(120)]))
    running.refresh()
    assert running._maintenance is not None
    running._maintenance.join(30)
    assert read_manifest(current_snapshot(tmp_path / "idx"))["info"]["max_id"] == 670  # type: ignore[arg-type]


def test_a_lagging_process_keeps_the_newer_snapshot(
    tmp_path: Path, do_import: Callable[..., tuple[int, list[str]]], sessions: sessionmaker[Session]
) -> None:
    do_import(csv_text(["sha256"], [entry() for _ in range(100)]))
    lagging = make_bank(sessions, tmp_path / "idx")
    lagging.load()
    do_import(csv_text(["sha256"], [entry() for _ in range(300)]))
    make_bank(sessions, tmp_path / "idx", resave_min=10).load()  # re-saves at max id 400
    newer = current_snapshot(tmp_path / "idx")
    assert newer is not None and read_manifest(newer)["info"]["max_id"] == 400
    assert lagging.save_snapshot() is None
    assert current_snapshot(tmp_path / "idx") == newer
    assert lagging.save_snapshot(force=True) is not None  # an explicit rebuild still writes


def test_a_running_process_adopts_the_snapshot_a_big_import_published(
    tmp_path: Path, do_import: Callable[..., tuple[int, list[str]]], sessions: sessionmaker[Session]
) -> None:
    do_import(csv_text(["sha256"], [entry() for _ in range(100)]))
    running = make_bank(sessions, tmp_path / "idx", resave_min=50)
    running.load()
    before = running.matcher
    big = [entry() for _ in range(300)]
    do_import(csv_text(["sha256"], big))
    make_bank(sessions, tmp_path / "idx", resave_min=50).load()  # what `hotline bank import` does
    running.refresh()
    assert running.matcher is not before  # mapped, not streamed
    assert running.state is not None and running.state.max_id == 400
    assert running.match(sha256=big[-1]["sha256"]) is not None
    # Small changes are still applied in place.
    few = [entry() for _ in range(3)]
    do_import(csv_text(["sha256"], few))
    same = running.matcher
    running.refresh()
    assert running.matcher is same and running.match(sha256=few[0]["sha256"]) is not None


def test_rebuild_replaces_matcher_and_snapshot(
    tmp_path: Path, do_import: Callable[..., tuple[int, list[str]]], sessions: sessionmaker[Session]
) -> None:
    rows = [entry() for _ in range(50)]
    do_import(csv_text(["md5", "phash"], rows))
    bank = make_bank(sessions, tmp_path / "idx")
    bank.load()
    with sessions() as s:
        for i in range(1, 21):
            retire(SqlUnitOfWork(s), i, "bulk withdrawal", "t")
        s.commit()
    bank.rebuild()
    assert len(bank.matcher) == 30
    assert bank.match(md5=rows[0]["md5"]) is None and bank.match(md5=rows[30]["md5"]) is not None
    m, info = load_snapshot(tmp_path / "idx")
    assert len(m) == 30 and info["max_id"] == 50


def _insert_raw(sessions: sessionmaker[Session], entry_id: int, md5: str) -> None:
    with sessions() as s:
        s.execute(
            text(
                "insert into bank_entries (id, md5, category, source, added_at) "
                "values (:i, :m, 'baseline', 'raw', '2026-01-01 00:00:00.000000')"
            ),
            {"i": entry_id, "m": md5},
        )
        s.commit()


def test_verify_finds_rows_committed_below_the_highest_id(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    # PostgreSQL hands out ids at insert time: a long transaction can commit
    # id 10 after id 20 was committed and seen. Simulated with explicit ids.
    hashes = {i: hx(16) for i in (1, 2, 20, 10)}
    for i in (1, 2, 20):
        _insert_raw(sessions, i, hashes[i])
    bank = make_bank(sessions, tmp_path / "idx")
    bank.load()
    _insert_raw(sessions, 10, hashes[10])
    bank.refresh()
    assert bank.match(md5=hashes[10]) is None  # id 10 <= 20: the cheap check cannot see it
    assert bank.verify() == 1
    hit = bank.match(md5=hashes[10])
    assert hit is not None and (hit.entry_id, hit.source) == (10, "raw")
    # A start from the (older) snapshot verifies too.
    again = make_bank(sessions, tmp_path / "idx")
    assert again.load() == "snapshot" and again.match(md5=hashes[10]) is not None


def test_verify_applies_retirements_made_behind_the_applications_back(
    tmp_path: Path, do_import: Callable[..., tuple[int, list[str]]], sessions: sessionmaker[Session]
) -> None:
    rows = [entry() for _ in range(20)]
    do_import(csv_text(["md5"], rows))
    bank = make_bank(sessions, tmp_path / "idx")
    bank.load()
    with sessions() as s:  # no audit row: refresh() cannot know
        s.execute(
            update(BankEntry)
            .where(BankEntry.id == 3)
            .values(retired_at=now(), retired_reason="sql")
        )
        s.commit()
    bank.refresh()
    assert bank.verify() == 1
    assert bank.match(md5=rows[2]["md5"]) is None
    # Rows deleted outright (never done by the application): the matcher is rebuilt.
    with sessions() as s:
        s.execute(text("delete from bank_entries where id = 5"))
        s.commit()
    bank.verify()
    assert bank.match(md5=rows[4]["md5"]) is None and bank.match(md5=rows[5]["md5"]) is not None
    assert len(bank.matcher) == 18


def test_a_malformed_row_in_the_database_does_not_stop_loading(
    sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    good = hx(16)
    _insert_raw(sessions, 1, good)
    _insert_raw(sessions, 2, "not-hex-at-all")
    _insert_raw(sessions, 3, hx(15))
    bank = make_bank(sessions)
    assert bank.match(md5=good) is not None
    assert len(bank.matcher) == 3  # the entries exist; only their bad hashes are left out
    assert "bank entry 2: md5 hash 'not-hex-at-all' is malformed" in caplog.text
    assert "bank entry 3: md5" in caplog.text


def test_snapshot_of_another_database_is_not_used(
    tmp_path: Path, do_import: Callable[..., tuple[int, list[str]]], sessions: sessionmaker[Session]
) -> None:
    rows = [entry() for _ in range(5)]
    do_import(csv_text(["md5"], rows))
    make_bank(sessions, tmp_path / "idx").load()
    url2 = f"sqlite:///{tmp_path / 'other.db'}"
    migrate(url2)
    other = make_sessionmaker(make_engine(url2))
    bank = make_bank(other, tmp_path / "idx")
    assert bank.load() == "database"
    assert bank.match(md5=rows[0]["md5"]) is None


def test_snapshot_of_a_recreated_database_is_not_used(
    tmp_path: Path, do_import: Callable[..., tuple[int, list[str]]], sessions: sessionmaker[Session]
) -> None:
    do_import(csv_text(["md5"], [entry() for _ in range(5)]))
    make_bank(sessions, tmp_path / "idx").load()
    with sessions() as s:  # same URL, same row count, other hashes
        s.execute(text("delete from bank_entries"))
        s.commit()
    other = [entry() for _ in range(5)]
    do_import(csv_text(["md5"], other))
    bank = make_bank(sessions, tmp_path / "idx")
    assert bank.load() == "database"
    assert bank.match(md5=other[0]["md5"]) is not None


def test_broken_snapshot_falls_back_to_the_database(
    tmp_path: Path, do_import: Callable[..., tuple[int, list[str]]], sessions: sessionmaker[Session]
) -> None:
    rows = [entry() for _ in range(5)]
    do_import(csv_text(["md5"], rows))
    make_bank(sessions, tmp_path / "idx").load()
    snap = current_snapshot(tmp_path / "idx")
    assert snap is not None
    (snap / "pdq" / "meta.json").write_text(json.dumps({"format": "something else"}))
    bank = make_bank(sessions, tmp_path / "idx")
    assert bank.load() == "database"
    assert bank.match(md5=rows[4]["md5"]) is not None


# --------------------------------------------------------------------------- compact matcher


def test_compact_matcher_agrees_with_bank_matcher() -> None:
    records = [
        BankRecord(
            id=i,
            category=RNG.choice(["baseline", "national"]),
            source=f"src{i % 3}",
            md5=hx(16) if i % 2 else None,
            sha256=hx(32),
            pdq=hx(32) if i % 3 else None,
            phash=hx(8),
        )
        for i in range(1, 300)
    ]
    plain, compact = BankMatcher(), CompactBankMatcher()
    for m in (plain, compact):
        m.add(records[:100])
        m.add(records[100:])  # a second, incremental add
        m.retire([5, 6, 7, 1000])
    assert len(compact) == len(plain) == 296
    for r in records[:60]:
        for kind in ("md5", "sha256", "pdq", "phash"):
            value = getattr(r, kind)
            if value is None:
                continue
            if kind in ("pdq", "phash"):
                value = flip(value, 3)
            assert compact.lookup(kind, value) == plain.lookup(kind, value)
    # Adding known ids again is harmless.
    compact.add(records[:10])
    assert len(compact) == 296
    assert compact.entries.dead == 3
    assert compact.entries.get(5) is None and compact.entries.get(8) == (records[7].category, "src2")


def test_entry_table_is_compact() -> None:
    m = CompactBankMatcher()
    n = 100_000
    from hashing.snapshot import EntryBatch

    ids = list(range(1, n + 1))
    batch = EntryBatch.from_columns(
        m.entries,
        ids,
        ["baseline"] * n,
        ["import"] * n,
        None,
        {"phash": [f"{i:016x}" for i in ids]},
    )
    m.add_batch(batch)
    e = m.entries
    assert e._ids.dtype == np.int64 and e._cat.dtype == np.uint16 and e._src.dtype == np.uint32
    assert e.categories == ["baseline"] and e.sources == ["import"]
    assert e._ids.nbytes + e._cat.nbytes + e._src.nbytes + e._alive.nbytes == 15 * n
    assert m.lookup("phash", f"{77:016x}", radius=0)[0].entry_id == 77


# --------------------------------------------------------------------------- settings and CLI


def test_index_dir_setting(tmp_path: Path) -> None:
    assert (
        Settings(database_url=f"sqlite:///{tmp_path}/h.db").index_path()
        == tmp_path / "var" / "index"
    )
    assert Settings(database_url="sqlite://").index_path() is None
    assert Settings(index_dir="none").index_path() is None
    assert Settings(index_dir="").index_path() is None
    assert Settings(index_dir=str(tmp_path / "x")).index_path() == tmp_path / "x"


def test_cli_import_rebuild_retire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from entrypoints.cli import main
    from hotline.config import get_settings

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("HOTLINE_DATABASE_URL", url)
    monkeypatch.setenv("HOTLINE_INDEX_DIR", str(tmp_path / "idx"))
    get_settings.cache_clear()
    try:
        rows = [entry() for _ in range(30)]
        f = tmp_path / "bank.csv"
        f.write_text(csv_text(["md5", "pdq"], rows) + "nothex,\n")
        runner = CliRunner()
        res = runner.invoke(main, ["bank", "import", str(f), "--errors", str(tmp_path / "err.txt")])
        assert res.exit_code == 0, res.output
        assert "imported 30 entries" in res.output and "refused 1 rows" in res.output
        assert "line 32: column md5" in (tmp_path / "err.txt").read_text()
        assert current_snapshot(tmp_path / "idx") is not None

        res = runner.invoke(main, ["bank", "retire", "2", "--reason", "test"])
        assert res.exit_code == 0, res.output
        res = runner.invoke(main, ["bank", "index", "rebuild"])
        assert res.exit_code == 0 and "snapshot of 29 entries" in res.output, res.output
        res = runner.invoke(main, ["bank", "index", "status"])
        assert res.exit_code == 0 and '"live": 29' in res.output, res.output
        m, _ = load_snapshot(tmp_path / "idx")
        assert not m.lookup("md5", rows[1]["md5"]) and m.lookup("md5", rows[2]["md5"])
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("matcher_class", [BankMatcher, CompactBankMatcher])
def test_a_gallery_matched_at_once_is_matched_as_one_image_at_a_time(matcher_class: type[BankMatcher]) -> None:
    """Classify matches a page's images in one call (``match_batch``); every image must get
    what ``match`` gives it alone: exact before perceptual, the closest perceptual entry, a
    PDQ of low quality never matched, a retired entry never."""
    rng = random.Random(5)

    def hex_of(nbytes: int) -> str:
        return "".join(f"{rng.randrange(256):02x}" for _ in range(nbytes))

    records = [BankRecord(id=i, category="baseline", source="t", md5=hex_of(16), sha1=hex_of(20),
                          sha256=hex_of(32), pdq=hex_of(32), phash=hex_of(8)) for i in range(1, 41)]
    matcher = matcher_class()
    matcher.add(records)
    matcher.retire([40])
    near_pair = BankRecord(id=41, category="other", source="t", pdq=flip(records[2].pdq or "", 20))
    matcher.add([near_pair])
    r = records
    images: list[dict[str, Any]] = [
        {"sha256": r[0].sha256, "pdq": r[5].pdq},  # exact wins over a perceptual hit elsewhere
        {"md5": r[1].md5},
        {"sha256": hex_of(32), "pdq": flip(r[2].pdq or "", 10), "pdq_quality": 90},  # closest: entry 3
        {"pdq": flip(r[3].pdq or "", 10), "pdq_quality": 20},  # too poor to match
        {"pdq": flip(r[3].pdq or "", 10), "pdq_quality": 20, "phash": flip(r[4].phash or "", 3)},
        {"md5": r[39].md5, "pdq": r[39].pdq},  # retired
        {"sha1": hex_of(20), "pdq": hex_of(32), "phash": hex_of(8)},  # unknown
        {},
        {"sha1": r[6].sha1, "phash": r[7].phash},
    ]
    one_by_one = [matcher.match(**hashes) for hashes in images]
    assert matcher.match_batch(images) == one_by_one
    assert [h.entry_id if h else None for h in one_by_one] == [1, 2, 3, None, 5, None, None, None, 7]
    assert matcher.match_batch([]) == []
    with pytest.raises(TypeError, match="unknown hash keyword"):
        matcher.match_batch([{"md5": r[0].md5}, {"crc32": "00"}])
