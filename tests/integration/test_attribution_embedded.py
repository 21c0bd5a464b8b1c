"""Each image has its own hoster, end to end on the embedded runtime (SQLite and PostgreSQL):
a page on hoster A shows a known image served by hoster B; B's address comes from a loopback
DNS server (``HOTLINE_DNS_SERVERS``) and its hoster from a loopback RDAP server
(``HOTLINE_RDAP_URL``). B's abuse desk gets a notice for its image at the loopback SMTP sink,
A's for the page; the facts (with their provenance) are in the item's classification and in
the hosting cache (migration 0007)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from doubles.dns import DnsServer
from doubles.loopback import LoopbackSite, SmtpSink
from doubles.rdap import RdapServer, domain, ip_network
from entrypoints.bootstrap import bootstrap
from hashing.synthetic import photo_like_jpeg
from hotline.config import Settings
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.storage.models import HostingCacheEntry, Item
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.items import ItemClassified
from schemas.reports import ReportSubmitted
from tests.integration import scenario
from tests.integration.test_embedded_pipeline import EmbeddedPipeline
from tests.xarf_check import checked_xarf

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hotline.db'}"
        return
    pg_url: str = request.getfixturevalue("pg_url")
    with scenario.fresh_pg_database(pg_url, "attr") as url:
        yield url


def test_a_page_on_a_showing_a_known_image_from_b_gets_b_a_notice(tmp_path: Path, database_url: str) -> None:
    known = photo_like_jpeg(320, 240, seed=4242)
    with contextlib.ExitStack() as running:
        site_a = LoopbackSite("127.0.0.2").start()
        running.callback(site_a.stop)
        site_b = LoopbackSite("127.0.0.3").start()
        running.callback(site_b.stop)
        dns = DnsServer().start()
        running.callback(dns.stop)
        dns.add("img.hoster-b.test", "127.0.0.3")
        rdap = RdapServer().start()
        running.callback(rdap.stop)
        rdap.add_network(ip_network("127.0.0.3/32", name="HOSTER-B-NET", hoster="Hoster B B.V.", country="NL",
                                    abuse="abuse@hoster-b.test", asn=64502))
        rdap.add_domain(domain("hoster-b.test", registrar="Registrar B", registrar_abuse="abuse@registrar-b.test"))
        mail = SmtpSink().start()
        running.callback(mail.stop)

        image_url = f"http://img.hoster-b.test:{site_b.port}/known.jpg"
        site_b.add("/known.jpg", "image/jpeg", known)
        site_a.add("/page.html", "text/html", f'<html><body><img src="{image_url}"></body></html>'.encode())
        page_url = f"http://www.hoster-a.test:{site_a.port}/page.html"
        hosting_file = tmp_path / "hosting.yaml"
        hosting_file.write_text(yaml.safe_dump({
            "hosts": {"www.hoster-a.test": ["127.0.0.2"]},
            "networks": [{"range": "127.0.0.2/32", "country": "NL", "asn": 64501, "hoster": "Hoster A B.V.",
                          "abuse": "abuse@hoster-a.test"}],
        }))
        settings = Settings(
            database_url=database_url, index_dir="none", smtp_host="127.0.0.1", smtp_port=mail.port,
            hosting_file=hosting_file, allow_private_fetch=True, dns_servers=f"{dns.host}:{dns.port}",
            rdap_url=rdap.url, rdap_timeout_seconds=10,
        )
        system = bootstrap(settings)
        running.callback(system.close)
        with system.sessions() as s:
            scenario.load_bank(SqlUnitOfWork(s), [known])
        runtime = EmbeddedRuntime(system.sessions, system.build_stages(("ingest", "classify", "notify")))
        runtime.start()
        running.callback(runtime.stop)

        EmbeddedPipeline(system.sessions).submit(ReportSubmitted(channel="api", urls=[page_url]))

        def at(address: str) -> list[object]:
            return [m for m in mail.snapshot() if address in m.rcpt_tos]

        [to_b] = scenario.wait_for("the notice at hoster B", lambda: at("abuse@hoster-b.test") or None, 60)
        [to_a] = scenario.wait_for("the notice at hoster A", lambda: at("abuse@hoster-a.test") or None, 60)
        assert runtime.wait_idle(30) and runtime.errors == {}

        report_b = checked_xarf(to_b.message)  # type: ignore[attr-defined]
        assert report_b["url"] == image_url and report_b["source_identifier"] == "127.0.0.3"
        assert report_b["hosting_provider"] == "Hoster B B.V." and report_b["asn"] == 64502
        assert report_b["registrar"] == "Registrar B"
        assert checked_xarf(to_a.message)["url"] == page_url  # type: ignore[attr-defined]
        assert len(mail.snapshot()) == 2

        with system.sessions() as s:
            item = s.scalars(select(Item).where(Item.url == page_url)).one()
            classified = ItemClassified.model_validate(item.classification)
            keys = set(s.scalars(select(HostingCacheEntry.key)).all())
        [image] = classified.images
        assert image.hosting is not None
        assert (image.hosting.source, image.hosting.address_source, image.hosting.abuse) == (
            "rdap", "dns", "abuse@hoster-b.test")
        assert classified.hosting is not None and classified.hosting.source == "hosting_file"
        assert [(r.hosting.hoster, r.route, r.action_id) for r in classified.attribution] == [
            ("Hoster A B.V.", "ntd", f"ntd-{item.id}"), ("Hoster B B.V.", "ntd", f"ntd-{item.id}-h2")]
        assert {"dns:img.hoster-b.test", "rdap-ip:127.0.0.3", "rdap-domain:img.hoster-b.test"} <= keys
