"""Privacy, checked after a full embedded pipeline run (issue 12, "Privacy"): no image bytes and
no reporter address in clear anywhere the run left something -- every column of every table
(the embedded bus is the ``bus_messages`` table), every file in the data and temp directories
the run used (the database file and its WAL included), the captured logs and output, and what
went out (notice mails, partner forwards). Reporter addresses enter through the edges (API,
form, CSV import) with ``HOTLINE_REPORTER_KEY`` set, so they are sealed and stored; the scan
looks for them in clear and in every case, and percent-encoded.

Images are looked for by magic number (JPEG, PNG, GIF, WebP) as raw bytes, as base64 at every
alignment (standard and URL-safe alphabets) and as hex in either case. The patterns are long
enough (4+ bytes; hex forms of 4+ bytes) that random data (hashes, sealed tokens, page
numbers of the SQLite file) matches them with negligible probability, so the test is reliable;
``test_the_scanner_finds_what_it_looks_for`` proves each form is found.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from sqlalchemy import select

from doubles.loopback import free_port, serve_app
from entrypoints.bootstrap import STAGE_NAMES, bootstrap
from entrypoints.cli import QUIET_LOGGERS, submit_reports
from entrypoints.web import create_app
from hashing.synthetic import photo_like_jpeg
from hotline.config import Settings
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.storage.models import BusMessage, BusOffset, Report
from hotline.storage.reporter_address import ReporterSeal, keep_address, new_key
from hotline.storage.unit_of_work import SqlUnitOfWork
from services.ingest.bulk import read_report_rows
from tests.integration import scenario
from tests.integration.scenario import DE_C, NL_A, PARTNER_TOKEN_ENV
from tests.integration.test_embedded_pipeline import EmbeddedPipeline

pytestmark = pytest.mark.integration

MAX_FILE_BYTES = 200 * 1024 * 1024  # bounded: a run's files are a few MB

JPEG = [bytes.fromhex(h) for h in ("ffd8ffe0", "ffd8ffe1", "ffd8ffdb", "ffd8ffee", "ffd8ffc0")]
PNG = [bytes.fromhex("89504e470d0a1a0a")]
GIF = [b"GIF87a", b"GIF89a"]
WEBP = [b"WEBPVP8"]  # follows "RIFF" and the size in every WebP file
MAGICS = JPEG + PNG + GIF + WEBP
RIFF_WEBP = re.compile(rb"RIFF.{4}WEBP", re.DOTALL)


def _b64_forms(magic: bytes) -> set[bytes]:
    """The base64 characters fully determined by ``magic`` at each of the three alignments."""
    forms: set[bytes] = set()
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + magic + b"\0\0\0")
        chars = [i for i in range(len(enc)) if 6 * i >= 8 * k and 6 * i + 6 <= 8 * (k + len(magic))]
        if len(chars) >= 4:
            part = enc[chars[0]:chars[-1] + 1]
            forms.add(part)
            forms.add(part.replace(b"+", b"-").replace(b"/", b"_"))
    return forms


def image_patterns() -> dict[bytes, str]:
    """pattern -> what it is, for a plain ``in`` search."""
    out: dict[bytes, str] = {}
    for m in MAGICS:
        out[m] = f"raw {m.hex()}"
        out[m.hex().encode()] = f"hex {m.hex()}"
        out[m.hex().upper().encode()] = f"HEX {m.hex()}"
        for form in _b64_forms(m):
            out[form] = f"base64 of {m.hex()}"
    return out


PATTERNS = image_patterns()


def find_leaks(data: bytes, addresses: Iterable[str]) -> list[str]:
    """What of images and ``addresses`` is in ``data`` (empty: nothing)."""
    found = [what for pattern, what in PATTERNS.items() if pattern in data]
    if RIFF_WEBP.search(data):
        found.append("raw RIFF....WEBP")
    folded = data.lower()
    for address in addresses:
        for form in {address, quote(address, safe="")}:
            if form.lower().encode() in folded:
                found.append(f"reporter address {address!r}")
    return found


def _as_bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False).encode()
    return str(value).encode()


def database_cells(engine: sa.Engine) -> Iterator[tuple[str, bytes]]:
    """(table.column, value) of every column of every table the database has (reflected, so a
    table the models do not know is scanned too)."""
    inspector = sa.inspect(engine)
    with engine.connect() as conn:
        for table in inspector.get_table_names():
            columns = [c["name"] for c in inspector.get_columns(table)]
            for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                for name, value in zip(columns, row, strict=True):
                    yield f"{table}.{name}", _as_bytes(value)


def files_under(*roots: Path) -> Iterator[Path]:
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                yield path


def test_the_scanner_finds_what_it_looks_for() -> None:
    jpeg = photo_like_jpeg(32, 32, seed=1)
    address = "Someone.Real@Mail-Example.test"
    for blob in (b"x" + jpeg, base64.b64encode(b"ab" + jpeg), base64.urlsafe_b64encode(b"a" + jpeg),
                 base64.b64encode(jpeg), jpeg.hex().encode(), jpeg.hex().upper().encode()):
        assert find_leaks(blob, []), blob[:20]
    from PIL import Image

    for fmt in ("PNG", "GIF", "WEBP"):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, fmt)
        raw = buf.getvalue()
        for blob in (raw, base64.b64encode(b"z" + raw), raw.hex().encode()):
            assert find_leaks(blob, []), (fmt, blob[:20])
    assert find_leaks(b"mailto:someone.real@mail-example.test", [address])
    assert find_leaks(b"to=SOMEONE.REAL%40MAIL-EXAMPLE.TEST", [address])
    assert find_leaks(b"nothing to see: v1:" + base64.urlsafe_b64encode(b"\0" * 200), [address]) == []


def test_no_image_bytes_and_no_reporter_address_after_a_full_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    # Everything a run may log, the loggers that ``hotline`` quiets unless ``-v`` included (an
    # earlier test's CLI call leaves them quiet): a verbose run must not leak either.
    for name in QUIET_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    run_tmp = tmp_path / "tmp"
    run_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(run_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(run_tmp))  # every temp file of the run goes here
    data = tmp_path / "data"
    data.mkdir()
    key = new_key()
    addresses = ["Reporter.One@Mail-Example.test", "second.reporter@mail-example.test",
                 "CSV.Reporter@Mail-Example.test", "gone.reporter@mail-example.test",
                 "form.reporter@mail-example.test"]
    (tmp_path / "world").mkdir()
    with scenario.world(tmp_path / "world") as world:
        monkeypatch.setenv(PARTNER_TOKEN_ENV, world.token)
        settings = Settings(database_url=f"sqlite:///{data / 'hotline.db'}", index_dir=str(data / "index"),
                            reporter_key=SecretStr(key), reporter_purge_tick_seconds=0.5, **world.settings_kwargs())
        system = bootstrap(settings)
        with system.sessions() as s:
            scenario.load_bank(SqlUnitOfWork(s), world.known_images)
        runtime = EmbeddedRuntime(system.sessions, system.build_stages(), periodic=system.periodic_for(STAGE_NAMES))
        server, thread = serve_app(create_app(system), port := free_port())
        runtime.start()
        try:
            import httpx

            # The whole acceptance flow (notice, forward, analyst, police, rejections) ...
            scenario.run_acceptance(EmbeddedPipeline(system.sessions), world, timeout=60)
            # ... and reports with addresses through every edge, to URLs of that world.
            gallery, bild = world.url(NL_A, "/gallery/"), world.url(DE_C, "/bild.jpg")
            ids: list[str] = []
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False) as client:
                for url, address in ((gallery, addresses[0]), (bild, addresses[1]),
                                     (world.url(NL_A, "/gone.jpg"), addresses[3])):
                    r = client.post("/api/v1/reports", json={"urls": [url], "reporter_email": address,
                                                             "description": "seen on a forum"})
                    assert r.status_code in (200, 201, 202), r.text
                    ids.append(r.json()["report_id"])
                page = client.post("/report", data={"urls": world.url(DE_C, "/bild.jpg?form"),
                                                    "reporter_email": addresses[4]})
                assert page.status_code == 200, page.text
                form_id = re.search(r'id="report-id">([0-9a-f]{32})<', page.text)
                assert form_id is not None, page.text
                ids.append(form_id.group(1))
            csv_text = f"url,description,reporter_email\n{gallery},csv,{addresses[2]}\n"
            messages, _, errors = read_report_rows(io.StringIO(csv_text))
            assert not errors
            seal = ReporterSeal(key)
            messages = [m.model_copy(update={"reporter_email": keep_address(seal, m.reporter_email)})
                        for m in messages]
            submit_reports(system.sessions, messages)
            ids += [m.report_id for m in messages]
            scenario.wait_for("every report with an address processed", lambda: all(
                scenario.report_status(system.sessions, i) not in (None, "received") for i in ids), 60)
            assert runtime.wait_idle(60)
            # The contact purge beside ingest has stripped the consumed messages (defect 11).
            scenario.wait_for("consumed bus messages without addresses", lambda: _sealed_in_consumed(system) == 0, 30)
            assert runtime.errors == {}
        finally:
            runtime.stop()
            server.should_exit = True
            thread.join(5)
        with system.sessions() as s:  # the addresses are kept -- sealed, and only in reports
            kept = s.scalars(select(Report.reporter_email).where(Report.reporter_email.is_not(None))).all()
        assert len(kept) == 5 and all(k is not None and k.startswith("v1:") for k in kept)
        outbound = [m.message.as_bytes() for m in world.mail.snapshot()]
        outbound += [json.dumps(f.body).encode() for f in world.partner.snapshot()]
        assert outbound, "the run sent notices and forwards"
        leaks: list[str] = []
        for where, value in database_cells(system.engine):
            leaks += [f"{where}: {what}" for what in find_leaks(value, addresses)]
        system.close()
    for path in files_under(data, run_tmp, tmp_path / "world"):
        assert path.stat().st_size <= MAX_FILE_BYTES, path
        leaks += [f"{path}: {what}" for what in find_leaks(path.read_bytes(), addresses)]
    for i, blob in enumerate(outbound):
        leaks += [f"outbound #{i}: {what}" for what in find_leaks(blob, addresses)]
    logs = "\n".join(f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    out, err = capfd.readouterr()
    for name, text in (("logs", logs), ("stdout", out), ("stderr", err)):
        leaks += [f"{name}: {what}" for what in find_leaks(text.encode(), addresses)]
    assert len(caplog.records) > 10, "the run's logs were captured"
    assert leaks == [], leaks


def _sealed_in_consumed(system) -> int:  # type: ignore[no-untyped-def]
    with system.sessions() as s:
        pos = s.scalar(select(sa.func.max(BusOffset.position)).where(BusOffset.consumer == "ingest")) or 0
        values = s.scalars(select(BusMessage.value).where(
            BusMessage.topic.in_(("reports.submitted", "reports.rejected")), BusMessage.id <= pos)).all()
    return sum(1 for v in values if "v1:" in v)
