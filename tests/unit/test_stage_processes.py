"""``hotline.runtime.stage_processes``: which stages go to child processes, the intake flag the
parent shares with them, the one-process-per-stage lock and a child's end with its parent."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hotline.runtime.stage_processes import (
    IntakeFlag,
    child_stage_names,
    exit_with_parent,
    stage_lock,
)

STAGES = ("ingest", "classify", "notify", "escalate", "followup")


def test_children_only_on_an_sqlite_file(tmp_path: Path) -> None:
    file_url = f"sqlite:///{tmp_path / 'h.db'}"
    assert child_stage_names("classify", file_url, STAGES) == ("classify",)
    assert child_stage_names(" notify , classify", file_url, STAGES) == ("classify", "notify")  # stage order
    assert child_stage_names("", file_url, STAGES) == ()
    # PostgreSQL needs the process-wide outbox lock; an in-memory database is one connection's.
    assert child_stage_names("classify", "postgresql+psycopg://u@127.0.0.1/h", STAGES) == ()
    assert child_stage_names("classify", "sqlite://", STAGES) == ()
    assert child_stage_names("classify", "sqlite:///:memory:", STAGES) == ()


def test_an_unknown_stage_name_is_refused_not_ignored(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="names no stage: clasify"):
        child_stage_names("clasify", f"sqlite:///{tmp_path / 'h.db'}", STAGES)


def test_the_intake_flag_is_seen_by_a_reader_of_the_same_file(tmp_path: Path) -> None:
    writer = IntakeFlag(tmp_path / "h.db.intake", create=True)
    reader = IntakeFlag(tmp_path / "h.db.intake", create=False)
    try:
        assert reader() is False
        writer.set(True)
        assert reader() is True
        writer.set(False)
        assert reader() is False
    finally:
        reader.close()
        writer.close()


HOLD = """
import sys
from pathlib import Path
from hotline.runtime.stage_processes import stage_lock
with stage_lock(Path(sys.argv[1]), "classify"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_holder_of_a_stage_waits_for_the_first_process_to_end(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        got = threading.Event()

        def take() -> None:
            with stage_lock(db, "classify"):
                got.set()

        t = threading.Thread(target=take, daemon=True)
        t.start()
        time.sleep(0.3)
        assert not got.is_set()  # the other process has it
        with stage_lock(db, "notify"):  # other stages are not held up
            pass
        assert holder.stdin is not None
        holder.stdin.close()  # the holder ends
        assert got.wait(30)
        t.join(5)
    finally:
        holder.kill()
        holder.wait(10)


ORPHAN = """
import os, sys, subprocess
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2]])
print(child.pid, flush=True)
sys.stdin.read()
"""
WATCH = """
import sys
from pathlib import Path
from hotline.runtime.stage_processes import exit_with_parent
exit_with_parent(int(sys.argv[1]), stop=lambda: Path(sys.argv[2]).write_text("stopped"), interval=0.05)
"""


def test_a_child_stops_when_its_parent_is_killed(tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN, WATCH, str(marker)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None and int(parent.stdout.readline())
        time.sleep(0.3)
        assert not marker.exists()  # the parent is alive: the child waits
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, "the child did not notice its parent's end"
            time.sleep(0.05)
        assert marker.read_text() == "stopped"
    finally:
        parent.kill()
        parent.wait(10)


def test_exit_with_parent_returns_at_once_for_a_parent_already_gone() -> None:
    stopped: list[bool] = []
    exit_with_parent(-1, stop=lambda: stopped.append(True))
    assert stopped == [True]
