"""`hotline demo` as a user runs it: a subprocess, the whole embedded pipeline, exit code 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_hotline_demo_quiet_succeeds(tmp_path: Path) -> None:
    # Hermetic: no operator settings from the calling shell, temporary files under tmp_path.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTLINE_")}
    env["TMPDIR"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "demo", "--quiet"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=110,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{proc.stderr[-4000:]}"
    assert "demo OK: every report ended where it should" in out
    assert "DEMO FAILED" not in out and "Traceback" not in proc.stderr

    counts_line = next(line for line in out.splitlines() if line.startswith("counts: "))
    counts = {state: int(n) for state, n in re.findall(r"(\w+) (\d+)", counts_line.removeprefix("counts: "))}
    assert sum(counts.values()) == 12  # the demo's twelve reports, each with one outcome
    for outcome in ("notice_sent", "forwarded", "escalated", "closed_offline", "closed_not_illegal", "rejected"):
        assert counts.get(outcome, 0) >= 1, counts
    assert "no outcome" not in counts_line
    assert re.search(r"time from submission to outcome: median \d+ ms, max \d+ ms", out)

    # --quiet: the summary only, not the per-report table
    assert "takedown notices received by the SMTP server" not in out
    assert len(out.strip().splitlines()) <= 5
    # its temporary database, hosting and partner files are gone again
    assert list(tmp_path.iterdir()) == []
