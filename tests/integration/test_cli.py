"""The ``hotline`` command line as an operator uses it: real subprocesses, a real database,
real HTTP on loopback and (for the police feed) real Kafka."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from doubles.loopback import LoopbackSite, free_port
from hashing.image import hash_image
from hashing.synthetic import photo_like_jpeg

pytestmark = pytest.mark.integration


def run(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HOTLINE_")}
    base["HOTLINE_DATABASE_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    base["HOTLINE_INDEX_DIR"] = str(tmp_path / "index")
    return base


def test_users_add_prints_a_token_that_authenticates(env: dict[str, str]) -> None:
    done = run(env, "users", "add", "ann", "--role", "analyst")
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip().splitlines()[-1]
    assert len(token) >= 32
    again = run(env, "users", "add", "ann", "--role", "analyst")
    assert again.returncode != 0 and "already exists" in again.stderr

    from doubles.loopback import serve_app
    from entrypoints.bootstrap import bootstrap
    from entrypoints.web import create_app
    from hotline.config import Settings

    system = bootstrap(Settings(database_url=env["HOTLINE_DATABASE_URL"], index_dir="none"))
    port = free_port()
    server, thread = serve_app(create_app(system), port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as api:
            assert api.get("/api/v1/items").status_code == 401
            assert api.get("/api/v1/items", headers={"Authorization": "Bearer wrong"}).status_code == 401
            ok = api.get("/api/v1/items", headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200 and ok.json() == {"items": []}
    finally:
        server.should_exit = True
        thread.join(5)
        system.engine.dispose()


def test_bank_import_export_and_refused_rows(env: dict[str, str], tmp_path: Path) -> None:
    h = hash_image(photo_like_jpeg(320, 240, seed=7))
    csv_in = tmp_path / "bank.csv"
    csv_in.write_text(
        "md5,sha256,pdq,phash,category,source\n"
        f"{h.md5},{h.sha256},{h.pdq},{h.phash},baseline,test-bank\n"
        f"{'0123456789abcdef' * 2},,,,national,test-bank\n"
        "not-a-hash,,,,baseline,test-bank\n"
    )
    done = run(env, "bank", "import", str(csv_in))
    assert done.returncode == 0, done.stderr
    assert "imported 2" in done.stdout
    assert "line 4" in done.stderr and "md5" in done.stderr  # the bad row is named, not dropped silently

    out = run(env, "bank", "export")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "md5,sha1,sha256,pdq,phash,category,source"
    assert any(h.md5 in line and h.pdq in line and "baseline" in line for line in lines[1:])
    assert len(lines) == 3


def test_schemas_check_passes_on_the_checked_in_files(env: dict[str, str]) -> None:
    done = run(env, "schemas", "check")
    assert done.returncode == 0, done.stderr
    assert "up to date" in done.stdout


@pytest.fixture()
def site() -> Iterator[LoopbackSite]:
    s = LoopbackSite("127.0.0.1").start()
    yield s
    s.stop()


def test_serve_embedded_processes_api_and_csv_reports(env: dict[str, str], site: LoopbackSite, tmp_path: Path) -> None:
    """``hotline serve`` with no broker runs the web app and all stages in one process."""
    env = {**env, "HOTLINE_ALLOW_PRIVATE_FETCH": "true"}
    token = run(env, "users", "add", "admin", "--role", "admin").stdout.strip().splitlines()[-1]
    csv_in = tmp_path / "reports.csv"
    csv_in.write_text(f"url,report\nhttp://127.0.0.1:{site.port}/gone-1.jpg,a\nftp://x.test/y,a\n")
    imported = run(env, "reports", "import", str(csv_in))
    assert imported.returncode == 0, imported.stderr
    csv_report = imported.stdout.strip().splitlines()[0]

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "entrypoints.cli", "serve", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"})
        deadline = time.monotonic() + 30
        while True:
            try:
                if api.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "hotline serve did not come up"
            time.sleep(0.2)
        r = api.post("/api/v1/reports", json={"urls": [f"http://127.0.0.1:{site.port}/gone-2.jpg"]})
        assert r.status_code == 202
        api_report = r.json()["report_id"]

        def states(report_id: str) -> list[str]:
            return [i["state"] for i in api.get(f"/api/v1/reports/{report_id}").json()["items"]]

        deadline = time.monotonic() + 30
        while states(api_report) != ["closed_offline"] or states(csv_report) != ["closed_offline", "rejected"]:
            assert time.monotonic() < deadline, (states(api_report), states(csv_report))
            time.sleep(0.2)
        assert {"/gone-1.jpg", "/gone-2.jpg"} <= set(site.requests)
    finally:
        proc.terminate()
        proc.wait(15)


def test_police_feed_embedded_prints_each_escalation(env: dict[str, str]) -> None:
    from entrypoints.bootstrap import bootstrap
    from hotline.config import Settings
    from hotline.storage.unit_of_work import SqlUnitOfWork
    from schemas.items import ItemClassified
    from services.assessment.logic import assess

    system = bootstrap(Settings(database_url=env["HOTLINE_DATABASE_URL"], index_dir="none"))
    with system.sessions() as session:
        store = SqlUnitOfWork(session)
        item = store.items.create("http://img.hoster-a.test/new.jpg")
        item.classification = ItemClassified(
            item_id=item.id, url=item.url, online=True, route="assessment", reason="test"
        ).model_dump(mode="json")
        store.items.set_state(item, "awaiting_assessment", "test", "test")
        store.enqueue(assess(store, item.id, verdict="illegal", category="national", analyst="ann"))
        store.commit()
        item_id = item.id
    system.engine.dispose()

    done = run(env, "police", "feed")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.strip().splitlines()]
    assert [m["item_id"] for m in lines] == [item_id]
    assert lines[0]["classification"]["category"] == "national"
    assert lines[0]["url"] == "http://img.hoster-a.test/new.jpg"


def test_police_feed_on_kafka_reads_the_topic(env: dict[str, str], kafka_brokers: str, unique_topic_prefix: str) -> None:
    from kafka import KafkaProducer

    from hotline.runtime.kafka import create_topics
    from schemas.notices import AnalystClassification, PoliceEscalation

    create_topics(kafka_brokers, unique_topic_prefix, 1)
    now = "2026-11-24T12:00:00Z"
    messages = [
        PoliceEscalation(
            escalation_id=f"pol-{n}", item_id=f"item-{n}", url=f"http://x.test/{n}.jpg", first_seen=now,
            last_seen=now, classification=AnalystClassification(analyst="ann", verdict="illegal", category="national"),
        )
        for n in range(3)
    ]
    producer = KafkaProducer(bootstrap_servers=kafka_brokers, acks="all")
    for m in messages:
        producer.send(unique_topic_prefix + "escalations.police", key=m.item_id.encode(), value=m.to_bytes())
    producer.flush()
    producer.close()

    env = {**env, "HOTLINE_KAFKA_BROKERS": kafka_brokers, "HOTLINE_TOPIC_PREFIX": unique_topic_prefix}
    done = run(env, "police", "feed")
    assert done.returncode == 0, done.stderr
    got = [json.loads(line)["item_id"] for line in done.stdout.strip().splitlines()]
    assert got == ["item-0", "item-1", "item-2"]


def test_partner_accounts_name_their_country(env: dict[str, str]) -> None:
    missing = run(env, "users", "add", "p-de", "--role", "partner")
    assert missing.returncode != 0 and "--country" in missing.stderr
    wrong = run(env, "users", "add", "ann2", "--role", "analyst", "--country", "DE")
    assert wrong.returncode != 0 and "only partner accounts" in wrong.stderr
    done = run(env, "users", "add", "p-de", "--role", "partner", "--country", "de")
    assert done.returncode == 0, done.stderr
    from sqlalchemy import create_engine, text

    engine = create_engine(env["HOTLINE_DATABASE_URL"])
    with engine.connect() as c:
        assert c.execute(text("select role, country from users where name = 'p-de'")).one() == ("partner", "DE")
    engine.dispose()


def test_partners_list_and_check_against_loopback_partners(env: dict[str, str], tmp_path: Path) -> None:
    import yaml

    from doubles.loopback import PartnerEndpoint

    good, bad_token, down = (PartnerEndpoint("tok-de").start(), PartnerEndpoint("tok-fr").start(),
                             PartnerEndpoint("tok-be").start())
    down.down = True
    dead_port = free_port()  # nothing listens there
    partners = tmp_path / "partners.yaml"
    partners.write_text(yaml.safe_dump({"partners": [
        {"country": "DE", "name": "Partner DE", "endpoint": good.url, "token_env": "T_DE",
         "status_endpoint": good.status_url},
        {"country": "FR", "name": "Partner FR", "endpoint": bad_token.url, "token_env": "T_FR"},
        {"country": "BE", "name": "Partner BE", "endpoint": down.url, "token_env": "T_BE"},
        {"country": "AT", "name": "Partner AT", "endpoint": f"http://127.0.0.1:{dead_port}/x", "token_env": "T_AT"},
        {"country": "IT", "name": "Partner IT", "endpoint": good.url, "token_env": "T_IT_UNSET"},
    ]}))
    env = {**env, "HOTLINE_PARTNERS_FILE": str(partners), "T_DE": "tok-de", "T_FR": "wrong", "T_BE": "tok-be",
           "T_AT": "x"}
    try:
        listed = run(env, "partners", "list", "--format", "json")
        assert listed.returncode == 0, listed.stderr
        rows = {r["country"]: r for r in json.loads(listed.stdout)}
        assert rows["DE"]["status_endpoint"] == good.status_url and rows["DE"]["token_set"] is True
        assert rows["IT"]["token_set"] is False and rows["IT"]["token_env"] == "T_IT_UNSET"
        text_out = run(env, "partners", "list")
        assert "T_IT_UNSET (NOT SET)" in text_out.stdout and "Partner DE" in text_out.stdout

        checked = run(env, "partners", "check", "--timeout", "5")
        assert checked.returncode == 1, checked.stdout + checked.stderr
        lines = checked.stdout.splitlines()

        def of(country: str) -> list[str]:
            return [ln.split("  ")[3] for ln in lines if ln.startswith(country + "  ")]

        assert of("DE") == ["ok", "ok"]  # forward and status endpoint
        assert of("FR") == ["credentials_refused"]
        assert of("BE") == ["unreachable"]
        assert of("AT") == ["unreachable"]
        assert of("IT") == ["not_configured"]
        assert good.posts == [] and good.received == []  # checking sends no report
        ok_only = {**env, "HOTLINE_PARTNERS_FILE": str(tmp_path / "ok.yaml")}
        (tmp_path / "ok.yaml").write_text(yaml.safe_dump({"partners": [
            {"country": "DE", "name": "Partner DE", "endpoint": good.url, "token_env": "T_DE"}]}))
        assert run(ok_only, "partners", "check").returncode == 0
    finally:
        for p in (good, bad_token, down):
            p.stop()
