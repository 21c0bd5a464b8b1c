"""What ``hotline``'s log holds of the requests the fetcher makes: httpx logs every request at
INFO, which in classify and the follow-up is the address of each reported image, one line per
image. The CLI keeps that out of the log unless asked (``-v``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import click
import httpx
import pytest
from click.testing import CliRunner

from entrypoints.cli import QUIET_LOGGERS, main

IMAGE_URL = "http://images.example.test/gallery/7.jpg"


@pytest.fixture
def probe() -> Iterator[click.Command]:
    """A subcommand that fetches one URL through httpx (no network: a mock transport) and
    prints what the log received; the group's own option handling runs before it, as it does
    before ``hotline serve``."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    @click.command("fetch-probe")
    def fetch_probe() -> None:
        handler = Keep(logging.DEBUG)
        logging.getLogger().addHandler(handler)
        try:
            with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200, content=b"x"))) as c:
                c.get(IMAGE_URL)
        finally:
            logging.getLogger().removeHandler(handler)
        click.echo("\n".join(r.getMessage() for r in records))

    saved = {n: logging.getLogger(n).level for n in ("", *QUIET_LOGGERS)}
    # As ``logging.basicConfig`` in the CLI leaves a fresh process; under pytest the root logger
    # has handlers already, so that call changes nothing here.
    logging.getLogger().setLevel(logging.INFO)
    main.add_command(fetch_probe)
    try:
        yield fetch_probe
    finally:
        main.commands.pop("fetch-probe", None)
        for name, level in saved.items():
            logging.getLogger(name or None).setLevel(level)


def test_a_fetched_url_stays_out_of_the_log(probe: click.Command) -> None:
    result = CliRunner().invoke(main, ["fetch-probe"])
    assert result.exit_code == 0, result.output
    assert IMAGE_URL not in result.output


def test_verbose_logs_the_requests(probe: click.Command) -> None:
    result = CliRunner().invoke(main, ["-v", "fetch-probe"])
    assert result.exit_code == 0, result.output
    assert IMAGE_URL in result.output
