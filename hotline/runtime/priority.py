"""A Kafka stage process may run at a lower CPU priority than the web process on its host.

Why: the Kafka equivalent of the embedded runtime's yielding to intake (``hotline.runtime.embedded``
"Yielding"). When the web process and the stage processes share a small host, a burst of reports
is a contest for the CPU: every stage process has work (the burst itself), and the scheduler
shares the cores fairly, so the web process gets a sixth of them and intake slows to what the
stages leave. With the stages at a lower priority the web process (and PostgreSQL and Kafka,
which the stages also wait on) win the contest; the stages take what is left and the burst waits
in Kafka, which is where back-pressure belongs. When nothing else wants the CPU a lower priority
costs nothing: niceness only decides contests.

Two kernel mechanisms decide that contest on Linux, and a process has to lower both:

- its **nice value** (``setpriority``), which weighs it against the other processes of its
  scheduling group. On Linux it is per thread and a new thread inherits it from the thread that
  starts it, so it is set before the stage starts any thread;
- its **autogroup's nice value** (``/proc/self/autogroup``). With autogroups on (the kernel's
  default on desktop and many server distributions), every session is a group and the groups
  share the CPU fairly whatever the nice values inside them: a stage started in a session of its
  own (``setsid``, as service managers and the benchmarks start it) weighs as much as the web
  process unless its group is lowered too. Only a session leader lowers its group: a stage
  started from a shell shares the shell's session, and lowering that group would lower
  everything started from it, the web process included.

Under systemd with the cpu controller each unit is a cgroup, and cgroups share the CPU by
``CPUWeight=``, not by either nice value: there the unit files are where this is set.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")


def lower_priority(nice: int) -> bool:
    """Lower this process's CPU priority to ``nice`` (0 leaves it); True when anything changed.

    Only ever lowers: a process already nicer than asked keeps its value (raising priority needs
    privileges, and an operator who started the stage with ``nice -n 15`` meant it)."""
    if nice <= 0:
        return False
    changed = False
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current < nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        changed = True
    if os.getsid(0) == os.getpid() and AUTOGROUP.exists():
        try:
            group_nice = int(AUTOGROUP.read_text().split("nice")[-1])
            if group_nice < nice:
                AUTOGROUP.write_text(str(nice))
                changed = True
        except (OSError, ValueError) as err:  # a kernel without it, or a read-only /proc
            log.warning("could not lower the autogroup's priority to nice %d: %s", nice, err)
    if changed:
        log.info("running at CPU priority nice %d (HOTLINE_STAGE_NICE)", nice)
    return changed
