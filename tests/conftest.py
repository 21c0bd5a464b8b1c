"""Top-level test fixtures: real services (Kafka, PostgreSQL, Chromium).

Services are never faked here. They are found through environment variables,
which `.ci/run` exports after starting the services:

    HOTLINE_TEST_KAFKA_BROKERS=127.0.0.1:9092        (deploy/kafka/start.sh)
    HOTLINE_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/hotline_test
                                                     (deploy/postgres/start.sh)
    HOTLINE_TEST_CHROMIUM=/usr/bin/chromium          (apt-get install chromium)
    HOTLINE_TEST_CHROMEDRIVER=/usr/bin/chromedriver  (apt-get install chromium-driver;
                                                      optional, found on PATH otherwise)

When a variable is missing or the service does not answer, tests that need it
are SKIPPED with the reason -- except when the `CI` environment variable is
set (CI=true), where they FAIL: CI must never pass by skipping.

Integration tests are marked ``@pytest.mark.integration`` (browser tests
``@pytest.mark.e2e``). Use ``unique_topic_prefix`` / ``unique_name`` for
Kafka topics, consumer groups, faust app ids, etc., so that runs and tests
sharing one broker do not collide.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable

import pytest
from hypothesis import settings as hypothesis_settings

from tests import sqlite_template

# Property tests explore new random inputs on every developer run (and keep what failed in
# .hypothesis/), but in CI they replay one fixed sequence, so a submission's CI result
# depends on the code alone. A failure found locally becomes an @example.
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

KAFKA_ENV = "HOTLINE_TEST_KAFKA_BROKERS"
DATABASE_ENV = "HOTLINE_TEST_DATABASE_URL"
CHROMIUM_ENV = "HOTLINE_TEST_CHROMIUM"
CHROMEDRIVER_ENV = "HOTLINE_TEST_CHROMEDRIVER"

_KAFKA_HINT = (
    "start Kafka with deploy/kafka/start.sh and "
    f"export {KAFKA_ENV}=127.0.0.1:9092"
)
_PG_HINT = (
    "start PostgreSQL with deploy/postgres/start.sh and "
    f"export {DATABASE_ENV}=postgresql+psycopg://postgres@127.0.0.1:5432/hotline_test"
)
_CHROMIUM_HINT = (
    "apt-get install chromium chromium-driver and "
    f"export {CHROMIUM_ENV}=/usr/bin/chromium"
)


def pytest_configure(config: pytest.Config) -> None:
    sqlite_template.install()  # a fresh SQLite database is a copy of one migrated once
    # kafka-python 3.0.12 loads its protocol schemas with the deprecated
    # importlib.resources API on every request: hundreds of identical warnings.
    config.addinivalue_line(
        "filterwarnings",
        r"ignore:(read|open)_text is deprecated:DeprecationWarning",
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    sqlite_template.uninstall()


def in_ci() -> bool:
    """True when running under CI (CI=true/1/yes): unavailable services fail."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def service_unavailable(reason: str) -> None:
    """Skip locally; fail loudly under CI. Never returns."""
    if in_ci():
        pytest.fail(
            f"{reason} -- CI is set, so a missing service is a failure, not a skip",
            pytrace=False,
        )
    pytest.skip(reason)


def _tcp_reachable(host: str, port: int, timeout: float = 3.0) -> str | None:
    """None if a TCP connection succeeds, else the error text."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def _split_hostport(hostport: str, default_port: int) -> tuple[str, int]:
    hostport = hostport.strip()
    if hostport.startswith("["):  # [ipv6]:port
        host, _, rest = hostport[1:].partition("]")
        return host, int(rest.lstrip(":") or default_port)
    host, sep, port = hostport.rpartition(":")
    if not sep:
        return hostport, default_port
    return host, int(port)


# --------------------------------------------------------------------- Kafka


@pytest.fixture(scope="session")
def kafka_brokers() -> str:
    """Bootstrap servers of a real Kafka, e.g. "127.0.0.1:9092"."""
    brokers = os.environ.get(KAFKA_ENV, "").strip()
    if not brokers:
        service_unavailable(f"{KAFKA_ENV} is not set; {_KAFKA_HINT}")
    errors = []
    for hp in brokers.split(","):
        host, port = _split_hostport(hp, 9092)
        err = _tcp_reachable(host, port)
        if err is None:
            break
        errors.append(f"{host}:{port}: {err}")
    else:
        service_unavailable(
            f"Kafka at {KAFKA_ENV}={brokers} is not reachable ({'; '.join(errors)}); {_KAFKA_HINT}"
        )
    # The port answers; make sure it is a Kafka broker that serves metadata.
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=brokers.split(","),
            client_id="hotline-tests-probe",
            request_timeout_ms=15000,
        )
        try:
            admin.list_topics()
        finally:
            admin.close()
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
        service_unavailable(
            f"Kafka at {KAFKA_ENV}={brokers} does not answer metadata requests "
            f"({type(exc).__name__}: {exc}); {_KAFKA_HINT}"
        )
    return brokers


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def pg_url() -> str:
    """SQLAlchemy URL of a real, empty-ish PostgreSQL test database."""
    url = os.environ.get(DATABASE_ENV, "").strip()
    if not url:
        service_unavailable(f"{DATABASE_ENV} is not set; {_PG_HINT}")
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 5})
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001
        safe = sa.engine.make_url(url).render_as_string(hide_password=True)
        service_unavailable(
            f"PostgreSQL at {DATABASE_ENV}={safe} is not reachable "
            f"({type(exc).__name__}: {exc}); {_PG_HINT}"
        )
    return url


# ------------------------------------------------------------------ Chromium


def _executable(env: str, fallback: str | None) -> str | None:
    path = os.environ.get(env, "").strip() or fallback
    if path and os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    return None


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Path of a Chromium binary for browser tests."""
    configured = os.environ.get(CHROMIUM_ENV, "").strip()
    if not configured:
        service_unavailable(f"{CHROMIUM_ENV} is not set; {_CHROMIUM_HINT}")
    path = _executable(CHROMIUM_ENV, None)
    if path is None:
        service_unavailable(f"{CHROMIUM_ENV}={configured} is not an executable file; {_CHROMIUM_HINT}")
    return path


@pytest.fixture(scope="session")
def chromedriver_path(chromium_path: str) -> str:
    """Path of chromedriver matching the Chromium (Debian package chromium-driver).

    Pass it to selenium's ``Service(executable_path=...)``: selenium-manager
    cannot download drivers on these machines.
    """
    path = _executable(CHROMEDRIVER_ENV, shutil.which("chromedriver"))
    if path is None:
        service_unavailable(
            f"chromedriver not found ({CHROMEDRIVER_ENV} unset/invalid and not on PATH); "
            "apt-get install chromium-driver"
        )
    return path


# ------------------------------------------------------------- unique names

_UNSAFE = re.compile(r"[^a-zA-Z0-9._-]+")


def make_unique_name(base: str = "t", hint: str = "") -> str:
    """A name safe for Kafka topics / group ids / faust app ids / SQL
    identifiers (after lowercasing): ``<base>-<hint>-<8 hex>``, <= 80 chars."""
    parts = [_UNSAFE.sub("-", p).strip("-.") for p in (base, hint) if p]
    stem = "-".join(p for p in parts if p)[:70].rstrip("-.")
    return f"{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def unique_topic_prefix(request: pytest.FixtureRequest) -> str:
    """Unique per test and run, e.g. ``t-test_round_trip-1a2b3c4d``.

    Build topic names as ``f"{unique_topic_prefix}.reports"`` etc. Kafka
    topic names may contain only ``[a-zA-Z0-9._-]`` (this prefix does)."""
    return make_unique_name("t", request.node.name[:40])


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory: ``unique_name("reports")`` -> ``reports-<test>-<8 hex>``."""
    hint = request.node.name[:30]

    def _make(base: str = "t") -> str:
        return make_unique_name(base, hint)

    return _make
