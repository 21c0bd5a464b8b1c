"""Browser-test fixtures: the whole system on loopback, and a headless Chromium driven by selenium.

One stack per session (it takes about a second to build and tests only add to it): the web app
under uvicorn on 127.0.0.1, the embedded runtime running every stage on SQLite in a temporary
directory, a hoster's web site on 127.0.0.2 serving synthetic images, and an SMTP sink. Names
resolve from the hosting file only (``NoDns``), so neither the stages nor the analyst's live
image view can reach beyond loopback. Each test gets its own browser profile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from doubles.loopback import LoopbackSite, SmtpSink, free_port, serve_app
from entrypoints.bootstrap import System, bootstrap
from entrypoints.demo import NoDns
from entrypoints.web import create_app
from hashing.image import hash_image
from hashing.synthetic import photo_like_jpeg
from hotline.config import Settings
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.storage.reporter_address import new_key
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import new_token

HOSTER_HOST = "images.hoster-a.test"


@dataclass
class Stack:
    """Handles a test needs: where things are, who may sign in, and the system underneath."""

    base_url: str
    site: LoopbackSite
    site_url: str  # http://images.hoster-a.test:PORT, resolved by the hosting file to 127.0.0.2
    system: System
    runtime: EmbeddedRuntime
    tokens: dict[str, str]  # role -> API token
    known_seed: int

    def api(self, role: str | None = "admin") -> httpx.Client:
        """An HTTP client with a bearer token of ``role`` (None: anonymous)."""
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=10, trust_env=False)

    def signed_in(self, role: str) -> httpx.Client:
        """An HTTP client that carries ``role``'s token the way a signed-in browser does: as the
        ``hotline_token`` cookie, with no Origin or Referer unless a test adds one."""
        return httpx.Client(base_url=self.base_url, cookies={"hotline_token": self.tokens[role]}, timeout=10,
                            trust_env=False)

    def wait_for(self, check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.05)

    def report_items(self, report_id: str, count: int, states: set[str] | None = None) -> list[dict[str, Any]]:
        """The report's items (full view) once ingest linked ``count`` of them, optionally once
        every item reached one of ``states``."""
        with self.api() as api:
            def ready() -> list[dict[str, Any]] | None:
                items = api.get(f"/api/v1/reports/{report_id}").json()["items"]
                if len(items) < count:
                    return None
                if states is not None and any(i["state"] not in states for i in items):
                    return None
                return items

            return self.wait_for(ready, what=f"report {report_id} to reach {states or 'ingest'}")


def click_and_wait(browser: Any, button: Any, timeout: float = 10.0) -> None:
    """Click a link or submit button and wait until the browser has left the page: ``click``
    returns as soon as the click is dispatched, before the next page is shown."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element("tag name", "html")
    button.click()

    def left_the_page(_: Any) -> bool:
        try:
            page.is_enabled()
        except WebDriverException:
            # Stale element, or (while the old document is being torn down) chromedriver's
            # "Node with given id does not belong to the document": either way, it is gone.
            return True
        return False

    WebDriverWait(browser, timeout).until(left_the_page)


ARTIFACTS_DIR = Path(__file__).resolve().parents[2] / "var" / "test-artifacts"
"""Where browser tests leave what a person may want to look at afterwards (screenshots); under
``var/``, which git ignores."""


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """The test artifacts folder, created on first use (``var/test-artifacts/``)."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS_DIR


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("e2e")
    site = LoopbackSite("127.0.0.2", free_port("127.0.0.2")).start()
    smtp = SmtpSink().start()
    site_url = f"http://{HOSTER_HOST}:{site.port}"
    known_seed = 101
    hosting_file = tmp / "hosting.yaml"
    hosting_file.write_text(yaml.safe_dump({
        "hosts": {HOSTER_HOST: ["127.0.0.2"]},
        "networks": [{"range": "127.0.0.2/32", "country": "NL", "asn": 64501,
                      "hoster": "Hoster A B.V.", "abuse": "abuse@hoster-a.test"}],
    }))
    settings = Settings(
        database_url=f"sqlite:///{tmp / 'hotline.db'}",
        kafka_brokers=None,
        hosting_file=hosting_file,
        partners_file=None,
        smtp_host=smtp.host,
        smtp_port=smtp.port,
        allow_private_fetch=True,  # the "hoster" lives on loopback
        notice_from="ntd@hotline-e2e.test",
        hotline_name="Hotline (e2e)",
        fetch_timeout_seconds=5,
        reporter_key=new_key(),  # the form asks for an address only when it can keep it sealed
        report_rate_per_minute=0,  # one client (the tests) posts many; the limit: tests/integration
    )
    system = bootstrap(settings, dns=NoDns())
    tokens = {role: new_token() for role in ("admin", "analyst", "hoster", "police")}
    with system.sessions() as session:
        store = SqlUnitOfWork(session)
        h = hash_image(photo_like_jpeg(640, 480, seed=known_seed))
        store.bank.add(category="baseline", source="e2e bank", md5=h.md5, sha1=h.sha1,
                             sha256=h.sha256, pdq=h.pdq, phash=h.phash)
        for role, token in tokens.items():
            store.users.add(f"e2e-{role}", role, token)
        store.commit()
    runtime = EmbeddedRuntime(system.sessions, system.build_stages())
    runtime.start()
    port = free_port()
    server, thread = serve_app(create_app(system), port)
    try:
        yield Stack(f"http://127.0.0.1:{port}", site, site_url, system, runtime, tokens, known_seed)
    finally:
        server.should_exit = True
        thread.join(10)
        runtime.stop()
        smtp.stop()
        site.stop()
        system.engine.dispose()


def _chromium(chromium_path: str, chromedriver_path: str, profile: Path, javascript: bool,
             prefs: dict[str, Any] | None = None) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
        f"--user-data-dir={profile}",
        "--no-proxy-server",
        # Belt and braces: the tests only open http://127.0.0.1:PORT, so no name needs resolving.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    prefs = dict(prefs or {})
    if not javascript:
        prefs["profile.managed_default_content_settings.javascript"] = 2
    if prefs:
        options.add_experimental_option("prefs", prefs)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver_path))
    driver.set_page_load_timeout(20)
    return driver


@pytest.fixture
def browser(chromium_path: str, chromedriver_path: str, tmp_path: Path) -> Iterator[Any]:
    """A fresh headless Chromium (own profile) that talks to loopback only."""
    driver = _chromium(chromium_path, chromedriver_path, tmp_path / "chromium-profile", javascript=True)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser_without_js(chromium_path: str, chromedriver_path: str, tmp_path: Path) -> Iterator[Any]:
    """Like ``browser`` with JavaScript switched off: proves a page works without it."""
    driver = _chromium(chromium_path, chromedriver_path, tmp_path / "chromium-profile-nojs", javascript=False)
    try:
        driver.get("data:text/html,<title>off</title><script>document.title='on'</script>")
        assert driver.title == "off", "JavaScript should be switched off in this browser"
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def dutch_browser(chromium_path: str, chromedriver_path: str, tmp_path: Path) -> Iterator[Any]:
    """A headless Chromium whose user prefers Dutch (``Accept-Language: nl-NL,nl``), JavaScript off."""
    driver = _chromium(chromium_path, chromedriver_path, tmp_path / "chromium-profile-nl", javascript=False,
                       prefs={"intl.accept_languages": "nl-NL,nl"})
    try:
        yield driver
    finally:
        driver.quit()
