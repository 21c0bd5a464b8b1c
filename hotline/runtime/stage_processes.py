"""Embedded runtime on SQLite: chosen stages in child processes of their own.

Why: one Python process runs one thread of Python at a time. With the web app and every stage
in one interpreter, the embedded runtime used one of this machine's two cores and topped out at
~30-45 items a second, while 50 reports/s of known material needs more (issue 13). Classify is
the stage that costs the most per item (fetch, decode, five hashes, match, attribution), so
``hotline serve`` runs it in a child process (``HOTLINE_EMBEDDED_PROCESSES``, default
``classify``) and the interpreter that serves the web app and the other stages gets the rest.

Why that is safe on SQLite, and only there: the embedded bus is a table, and a stage reads the
rows past its committed position, which is only right if rows become visible in id order.
SQLite has one writer for the whole database, across processes too, so a row's id and its
commit come in the same order (``hotline.storage.unit_of_work`` needs a process-wide lock for
that on PostgreSQL, which a second process would not share). Everything else a stage shares
with the others is in the database already, as it is on Kafka, where every stage is a process.

What the parent does (``ChildStages``):

- starts ``hotline serve --stage NAME`` per child stage with its own environment, after it has
  migrated the database, and tells the child who its parent is and where the intake flag is;
- restarts a child that exits (1 s, doubling to 30 s while it keeps dying), and stops the
  children (TERM, then KILL after a grace period) when it stops itself;
- publishes "intake is in a burst" (``IntakePressure``) to a one-byte shared file every 50 ms,
  so a child's stage defers to intake exactly as the in-process stages do
  (``hotline.runtime.embedded`` "Yielding").

What a child does (``child_main`` helpers):

- holds an exclusive lock per stage and database (``stage_lock``) for as long as it runs: a
  second process for the same stage waits for the first to end, so a message is never handled
  by two processes at once (e.g. a restarted parent's new child while the old one is still
  finishing its step);
- exits when its parent is gone (``exit_with_parent``): a parent killed with SIGKILL cannot stop
  its children, and a stage running on without its parent would hold the lock its successor
  waits for. Its committed work stays; an interrupted step is rolled back, as on any crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

PARENT_ENV = "HOTLINE_EMBEDDED_PARENT"  # the parent's pid, set for each child
FLAG_ENV = "HOTLINE_EMBEDDED_INTAKE_FLAG"  # the path of the intake flag file, set for each child


def sqlite_file(database_url: str) -> Path | None:
    """The database file of an SQLite URL, None for anything else (PostgreSQL, in-memory)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).resolve()


def child_stage_names(setting: str, database_url: str, known: Sequence[str]) -> tuple[str, ...]:
    """The stages ``HOTLINE_EMBEDDED_PROCESSES`` puts in child processes, in ``known``'s order;
    none unless the database is an SQLite file (see the module docstring). Unknown names are
    refused: a typo would otherwise quietly keep the stage in the parent."""
    wanted = [n.strip() for n in setting.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        raise ValueError(f"HOTLINE_EMBEDDED_PROCESSES names no stage: {', '.join(unknown)} "
                         f"(stages: {', '.join(known)})")
    if not wanted:
        return ()
    if sqlite_file(database_url) is None:
        log.info("HOTLINE_EMBEDDED_PROCESSES needs an SQLite file; every stage runs in this process")
        return ()
    return tuple(n for n in known if n in wanted)


class IntakeFlag:
    """One byte in a file both processes map: 1 while intake is in a burst. A file and not a
    pipe: the child reads it whenever its stage is about to step (a read of shared memory), the
    parent overwrites it, and nobody waits for anybody."""

    def __init__(self, path: Path, create: bool) -> None:
        self.path = path
        if create:
            path.write_bytes(b"\0")
        self._file = open(path, "r+b" if create else "rb")  # noqa: SIM115 - mapped for our lifetime
        self._map = mmap.mmap(self._file.fileno(), 1, access=mmap.ACCESS_WRITE if create else mmap.ACCESS_READ)

    def set(self, busy: bool) -> None:
        self._map[0] = 1 if busy else 0

    def __call__(self) -> bool:
        return self._map[0] == 1

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._map.close()
        self._file.close()


class ChildStages:
    """The parent's side: start, watch and stop one ``hotline serve --stage NAME`` per stage."""

    def __init__(self, names: Sequence[str], database_file: Path, pressure: Callable[[], bool] | None,
                 host: str = "127.0.0.1", grace_seconds: float = 10.0,
                 command: Sequence[str] = (sys.executable, "-m", "entrypoints.cli", "serve")) -> None:
        self.names = tuple(names)
        self.command = tuple(command)
        self.grace_seconds = grace_seconds
        self.flag = IntakeFlag(database_file.with_name(database_file.name + ".intake"), create=True)
        self.pressure = pressure
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = dict.fromkeys(self.names, 0)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _spawn(self, name: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, PARENT_ENV: str(os.getpid()), FLAG_ENV: str(self.flag.path)}
        # Same session and output as the parent: an operator's Ctrl-C and a service manager's
        # stop reach the children too, and their log lines go where the parent's go.
        proc = subprocess.Popen([*self.command, "--stage", name], env=env, stdin=subprocess.DEVNULL)
        log.info("stage %s runs in process %d", name, proc.pid)
        return proc

    def start(self) -> None:
        self._stop.clear()
        for name in self.names:
            self.procs[name] = self._spawn(name)
        self._threads = [threading.Thread(target=self._watch, name="child-stages", daemon=True)]
        if self.pressure is not None:
            self._threads.append(threading.Thread(target=self._publish, name="intake-flag", daemon=True))
        for t in self._threads:
            t.start()

    def _watch(self) -> None:
        delay: dict[str, float] = dict.fromkeys(self.names, 1.0)
        since: dict[str, float] = dict.fromkeys(self.names, time.monotonic())
        while not self._stop.wait(0.5):
            for name, proc in list(self.procs.items()):
                code = proc.poll()
                if code is None:
                    if time.monotonic() - since[name] > 60:
                        delay[name] = 1.0  # it ran a while: the next crash starts the backoff anew
                    continue
                log.error("stage %s (process %d) exited with %s; starting it again in %.0f s",
                          name, proc.pid, code, delay[name])
                if self._stop.wait(delay[name]):
                    return
                delay[name] = min(delay[name] * 2, 30.0)
                self.restarts[name] += 1
                since[name] = time.monotonic()
                self.procs[name] = self._spawn(name)

    def _publish(self) -> None:
        assert self.pressure is not None
        while not self._stop.wait(0.05):
            self.flag.set(self.pressure())

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        for name, proc in self.procs.items():
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("stage %s (process %d) did not stop in %.0f s; killing it",
                            name, proc.pid, self.grace_seconds)
                proc.kill()
                proc.wait(10)
        self.flag.close()


@contextlib.contextmanager
def stage_lock(database_file: Path, stage: str) -> Iterator[None]:
    """Hold ``<database>.<stage>.lock`` exclusively; wait (logging once) while another process
    holds it. ``flock``: the kernel releases it when the holder dies, however it dies."""
    path = database_file.with_name(f"{database_file.name}.{stage}.lock")
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("stage %s: another process runs it on this database; waiting for it to end", stage)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def exit_with_parent(parent: int, stop: Callable[[], None], interval: float = 0.5) -> None:
    """Block until ``parent`` is no longer this process's parent, then ``stop()`` (a parent
    that dies hands its children to another process, so the parent pid changes)."""
    while os.getppid() == parent:
        time.sleep(interval)
    log.warning("the parent process %d is gone; stopping", parent)
    stop()
