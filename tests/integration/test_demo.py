"""`hotline demo` as a user runs it: a subprocess, the whole embedded pipeline, exit code 0."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Hermetic: no operator settings from the calling shell, temporary files under tmp_path.
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTLINE_")}
    env["TMPDIR"] = str(tmp_path)
    return subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "demo", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=110,
    )


@pytest.mark.timeout(120)
def test_hotline_demo_quiet_succeeds(tmp_path: Path) -> None:
    proc = run_demo(tmp_path, "--quiet")
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{proc.stderr[-4000:]}"
    assert "demo OK: every report ended where it should" in out
    assert "DEMO FAILED" not in out and "Traceback" not in proc.stderr

    counts_line = next(line for line in out.splitlines() if line.startswith("counts: "))
    counts = {state: int(n) for state, n in re.findall(r"(\w+) (\d+)", counts_line.removeprefix("counts: "))}
    assert sum(counts.values()) == 13  # the demo's thirteen reports (one from the partner DE), one outcome each
    for outcome in ("notice_sent", "forwarded", "escalated", "closed_offline", "closed_not_illegal", "rejected"):
        assert counts.get(outcome, 0) >= 1, counts
    assert "no outcome" not in counts_line
    assert re.search(r"time from submission to outcome: median \d+ ms, max \d+ ms", out)
    # after the notice: hoster B (two notices ignored) is ranked before hoster A (removed)
    assert re.search(r"after the notice \(\+\d+ h simulated in [\d.]+ s\): 2 reminders; monitor: "
                     r"1\. Hoster B B\.V\. removed 0 of 2, 2 open past the deadline; "
                     r"2\. Hoster A B\.V\. removed 2 of 2, median \d+ h", out), out

    # the police release of the analyst-confirmed item led to its NTD
    assert re.search(r"police: pol-\w+ held, released by demo-police; its NTD reached abuse@hoster-a\.test \d+ ms "
                     r"after the release", out), out
    # --quiet: the summary only, not the per-report table
    assert "takedown notices received by the SMTP server" not in out
    assert len(out.strip().splitlines()) <= 5
    # its temporary database, hosting and partner files are gone again
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(120)
def test_hotline_demo_shows_the_follow_up(tmp_path: Path) -> None:
    proc = run_demo(tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{proc.stderr[-4000:]}"
    assert "takedown notices received by the SMTP server" in out  # the per-report part is still there
    section = out[out.index("after the notice (simulated time)"):]
    lines = section.splitlines()
    # hoster A removed its image: the time to removal from the first notice and from the first report
    a = lines.index(next(line for line in lines if line.strip().startswith("Hoster A B.V.")))
    assert re.match(r"\s+removed \d+ h after the first notice \(\d+ h after the first report\)", lines[a + 1])
    # hoster B ignored both its notices: one reminder each, at the deadline of the simulated clock
    reminders = [line for line in lines if "reminder sent to abuse@hoster-b.test at " in line]
    assert len(reminders) == 2 and all("UTC, 1 day after the notice" in line for line in reminders), reminders
    assert all(line.lstrip().startswith("still online") for line in reminders)
    assert "reminder sent to abuse@hoster-a.test" not in section
    # the public monitor ranks the slow hoster first
    table = section[section.index("public monitor, GET /api/v1/monitor/hosters"):].splitlines()
    ranked = [line.split()[1:4] for line in table[2:4]]
    assert ranked == [["Hoster", "B", "B.V."], ["Hoster", "A", "B.V."]], table
    assert re.match(r"\s+1\s+Hoster B B\.V\.\s+2\s+0\s+–\s+0 %\s+2$", table[2]), table
    # hoster A: the first report's notice and the one for the partner hotline DE's report
    assert re.match(r"\s+2\s+Hoster A B\.V\.\s+2\s+2\s+\d+ h\s+100 %\s+0$", table[3]), table
    # partner hotlines, both ways: the DE partner's CR removes its forwarded item, and it got status
    # updates on the report it forwarded to us, in order
    both = out[out.index("partner hotlines, both ways:"):].splitlines()
    assert "reports CR on fwd-" in both[1] and "the item is removed" in both[1], both
    assert [line.split()[0] for line in both[3:6]] == ["acknowledged", "notice_sent", "removed"], both
    assert [line.split()[2] for line in both[3:6]] == ["-", "ISP", "CR"], both
