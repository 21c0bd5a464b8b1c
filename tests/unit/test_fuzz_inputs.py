"""A small, derandomized sample of ``python -m benchmarks.fuzz_inputs`` (every target: each
topic through each stage that reads it, the operator files, the CSV imports) in the normal
suite: no crash, every invalid message rejected with a reason. The full run (100,000 cases)
and its figures are in docs/reliability.md."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import strategies as st

from benchmarks import fuzz_inputs
from hotline.config import get_settings
from hotline.operator_files import OperatorFileError
from services.classify.hosting import HostingDirectory
from services.escalate.partners import PartnerDirectory

CASES_PER_TARGET = 12


def test_a_sample_of_every_target_finds_no_crash_and_no_failure() -> None:
    out = io.StringIO()
    results = fuzz_inputs.run(CASES_PER_TARGET * 16, derandomize=True, out=out)
    assert len(results) >= 16, sorted(results)  # every stage input, undecoded topics, files, CSVs
    assert {n for n in results if n.startswith("stage:")} >= {
        "stage:ingest:reports.submitted", "stage:classify:items.accepted", "stage:notify:notices.ntd",
        "stage:escalate:forwards.partner", "stage:followup:rechecks.due"}
    problems = {n: t.crashes + t.failures for n, t in results.items() if t.ncrash or t.nfail}
    assert problems == {}, problems
    assert all(t.cases >= 10 for t in results.values()), {n: t.cases for n, t in results.items()}


def test_the_fuzzer_counts_crashes_and_unclear_errors() -> None:
    """It can fail: a loader that raises anything but OperatorFileError is a crash, one whose
    message spans lines a failure."""
    def crashing(text: str) -> None:
        raise KeyError(text)

    def unclear(text: str) -> None:
        raise OperatorFileError("line one\nline two")

    docs = st.sampled_from(["a: 1", "hosts: {}"])
    crashed = fuzz_inputs.run_target(("crashing", docs, fuzz_inputs.operator_file_check(crashing)), 5, True)
    assert crashed.ncrash == crashed.cases >= 1 and "KeyError" in crashed.crashes[0]
    failed = fuzz_inputs.run_target(("unclear", docs, fuzz_inputs.operator_file_check(unclear)), 5, True)
    assert failed.nfail == failed.cases >= 1 and failed.ncrash == 0


@pytest.mark.parametrize("text, expected", [
    ("networks: [", "not valid YAML at line 1"),
    ("- a\n- b\n", "the top level must be a mapping"),
    ("networks:\n  - range: 10.0.0.0/99\n    country: NL\n    hoster: X\n", "10.0.0.0/99"),
    ("hosts:\n  'a\\nb': 1\n", "hosts.a\\nb"),
])
def test_a_bad_hosting_file_is_one_clear_line(text: str, expected: str) -> None:
    with pytest.raises(OperatorFileError) as info:
        HostingDirectory.from_text(text)
    message = str(info.value)
    assert message.startswith("HOTLINE_HOSTING_FILE") and expected in message and "\n" not in message


def test_a_bad_partners_file_is_one_clear_line() -> None:
    with pytest.raises(OperatorFileError, match=r"HOTLINE_PARTNERS_FILE: partners.0.country"):
        PartnerDirectory.from_text("partners:\n  - country: Germany\n    name: X\n    endpoint: http://x\n")


def test_serve_with_a_bad_operator_file_prints_the_error_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from entrypoints.cli import main

    bad = tmp_path / "hosting.yaml"
    bad.write_bytes(b"networks:\n  - range: \xff\xfe\n")
    monkeypatch.setenv("HOTLINE_DATABASE_URL", f"sqlite:///{tmp_path / 'h.db'}")
    monkeypatch.setenv("HOTLINE_INDEX_DIR", "none")
    monkeypatch.setenv("HOTLINE_HOSTING_FILE", str(bad))
    monkeypatch.delenv("HOTLINE_KAFKA_BROKERS", raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["serve"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert f"Error: HOTLINE_HOSTING_FILE ({bad}): not UTF-8" in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, OperatorFileError)


def test_a_lone_surrogate_in_a_csv_import_is_refused_with_its_row() -> None:
    """Found by the 100,000-case run: a CSV text with a lone surrogate (U+D800, which no file
    read with ``surrogateescape`` gives, but text from other code can) was accepted into a
    message that could not be encoded. Now the row is refused, naming why."""
    import io

    from services.ingest.bulk import read_report_rows

    messages, _, errors = read_report_rows(io.StringIO("url,url\r\n5),\ud800\r\nhttp://a.test/ok,http://a.test/ok\r\n"))
    assert [m.urls for m in messages] == [["http://a.test/ok"]]
    assert errors == ["line 2: column url: not text (a lone surrogate U+D800 at position 0)"]
