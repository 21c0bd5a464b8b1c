"""``hotline serve --workers N`` is for the Kafka runtime's web processes only: the embedded
runtime has one web process by design (its stages and the web share one SQLite bus), and a stage
process has no web app to multiply. Refused before anything starts."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from entrypoints.cli import main
from hotline.config import get_settings


@pytest.mark.parametrize(("env", "args"), [
    ({"HOTLINE_KAFKA_BROKERS": ""}, ["serve", "--workers", "2"]),
    ({"HOTLINE_KAFKA_BROKERS": ""}, ["serve", "--stage", "web", "--workers", "2"]),
    ({"HOTLINE_KAFKA_BROKERS": "127.0.0.1:1"}, ["serve", "--stage", "ingest", "--workers", "2"]),
])
def test_more_than_one_worker_is_refused_outside_kafka_web(env: dict[str, str], args: list[str]) -> None:
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, args, env=env)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "more than one worker needs --stage web on Kafka" in result.output
