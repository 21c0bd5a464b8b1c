"""``hotline reports import`` and ``hotline bank import`` with hostile files (issue 12, defect 7):
a field over the csv module's limit, bytes that are not UTF-8, unknown categories, degenerate
hashes, bad e-mail addresses. Each bad row is refused with its line and the reason; the other
rows are imported."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hotline.storage.reporter_address import ReporterSeal, new_key
from tests.integration.test_cli import env, run  # noqa: F401  (the fixture)


def _reports(db: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("select channel, reporter_email from reports").fetchall()


def test_reports_import_refuses_bad_rows_and_imports_the_rest(env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    rows = [b"url,description,reporter_email\n"]
    for n in range(10):
        if n == 3:
            rows.append(b'http://a.test/3,"' + b"x" * 140_000 + b'",\n')  # over csv's 131,072
        elif n == 5:
            rows.append(b"http://a.test/5,caf\xe9 latin-1,\n")  # not UTF-8
        elif n == 7:
            rows.append(b"http://a.test/7,,not-an-email\n")
        elif n == 8:
            rows.append(b"http://a.test/8,,a\x00@b.test\n")
        else:
            rows.append(f"http://a.test/{n},row {n},r{n}@example.org\n".encode())
    path = tmp_path / "reports.csv"
    path.write_bytes(b"".join(rows))
    key = new_key()  # addresses are kept only sealed, and only with a key
    done = run({**env, "HOTLINE_REPORTER_KEY": key}, "reports", "import", str(path))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "line 5: not CSV" in done.stderr and "field larger than field limit" in done.stderr
    assert "line 7: column description: not UTF-8 (byte 0xE9" in done.stderr
    assert "line 9: column reporter_email: not a valid e-mail address" in done.stderr
    assert "line 10: column reporter_email: not a valid e-mail address: it contains a control" in done.stderr
    assert "submitted 6 report(s) with 6 URL(s), refused 4 row(s)" in done.stderr
    stored = _reports(tmp_path / "cli.db")
    assert len(stored) == 6 and not any("@" in (email or "") for _, email in stored)  # never in clear
    seal = ReporterSeal(key)
    assert sorted(seal.open(email or "") for _, email in stored) == sorted(
        f"r{n}@example.org" for n in range(10) if n not in (3, 5, 7, 8))


def test_bank_import_refuses_unknown_categories_and_degenerate_hashes(env: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    good_pdq = "3d0593eaecb905c23a1468b66b957d760ad4ec2045b1ef8788c5d52b8c5b3e6d"
    path = tmp_path / "bank.csv"
    path.write_bytes(
        b"md5,pdq,phash,category,source\n"
        + f"0123456789abcdef0123456789abcdef,{good_pdq},,baseline,t\n".encode()   # line 2: good
        + b"1123456789abcdef0123456789abcdef,,,nonsense-category,t\n"            # line 3
        + b"," + b"0" * 64 + b",,baseline,t\n"                                     # line 4: all-zero PDQ
        + b",,ffffffffffffffff,national,t\n"                                       # line 5: all-ones pHash
        + b"," + f"{1:064x}".encode() + b",,baseline,t\n"                         # line 6: 1 bit set
        + b"2123456789abcdef0123456789abcdef,,,B2,caf\xe9\n"                       # line 7: not UTF-8
        + b"3123456789abcdef0123456789abcdef,,,national,t\n"                       # line 8: good
    )
    done = run(env, "bank", "import", str(path))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "line 3: column category: unknown category 'nonsense-category'" in done.stderr
    assert "line 4: column pdq: degenerate hash" in done.stderr
    assert "line 5: column phash: degenerate hash" in done.stderr
    assert "line 6: column pdq: degenerate pdq hash (1 of 256 bits set" in done.stderr
    assert "line 7: not UTF-8 (byte 0xE9 at position" in done.stderr
    assert "imported 2 entries" in done.stdout
