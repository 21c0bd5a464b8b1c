"""``hotline.runtime.priority.lower_priority``: a Kafka stage process lowers its nice value and,
when it leads its own session, its autogroup's (the kernel shares the CPU between autogroups
first, so a stage in a session of its own would otherwise weigh as much as the web process).
Each case runs in a child process: a priority once lowered cannot be raised again without
privileges, and the test process must keep its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = """
import json, os, sys
from pathlib import Path
from hotline.runtime.priority import lower_priority
first = lower_priority(int(sys.argv[1]))
second = lower_priority(int(sys.argv[1]))
group = Path("/proc/self/autogroup")
print(json.dumps({"first": first, "second": second, "nice": os.getpriority(os.PRIO_PROCESS, 0),
                  "group": group.read_text().split("nice")[-1].strip() if group.exists() else None}))
"""


def _run(nice: int, *, own_session: bool, prefix: tuple[str, ...] = ()) -> dict[str, object]:
    import json

    out = subprocess.run([*prefix, sys.executable, "-c", CHILD, str(nice)], capture_output=True, text=True,
                         check=True, start_new_session=own_session, timeout=60)
    return dict(json.loads(out.stdout))


def _my_group_nice() -> str | None:
    group = Path("/proc/self/autogroup")
    return group.read_text().split("nice")[-1].strip() if group.exists() else None


def test_a_session_leader_lowers_its_nice_value_and_its_autogroup_once() -> None:
    got = _run(7, own_session=True)
    assert got["nice"] == 7
    assert got["first"] is True and got["second"] is False  # the second call finds it done
    if got["group"] is not None:
        assert got["group"] == "7"


def test_a_process_in_a_shared_session_leaves_the_session_group_alone() -> None:
    before = _my_group_nice()
    got = _run(5, own_session=False)
    assert got["nice"] == 5
    # The group is this test process's session's: lowering it would lower the web process too.
    assert got["group"] == before and _my_group_nice() == before


def test_zero_changes_nothing() -> None:
    got = _run(0, own_session=True)
    assert got["first"] is False and got["nice"] == os.getpriority(os.PRIO_PROCESS, 0)


@pytest.mark.skipif(not Path("/usr/bin/nice").exists(), reason="needs nice(1)")
def test_a_process_started_nicer_keeps_its_value() -> None:
    got = _run(10, own_session=True, prefix=("/usr/bin/nice", "-n", "15"))
    assert got["nice"] == 15  # only ever lowered, never raised back to 10
