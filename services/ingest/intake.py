"""Recording a submitted report: the report row and its ``reports.submitted`` outbox row, in
the caller's unit of work. The web routes hand these jobs to the process's group committer
(``hotline.storage.group_commit``): many reports, one transaction, one commit, and each
request answered 202 only after that commit. ``HOTLINE_INTAKE_GROUP_COMMIT=false`` keeps the
old path, one commit per request (the benchmark's baseline)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from hotline.kernel.messages import Outgoing
from hotline.storage.group_commit import GroupCommitter
from hotline.storage.reporter_address import ReporterSeal, keep_address
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.reports import ReportSubmitted

_committer_lock = threading.Lock()


def clean_key(idempotency_key: str | None) -> str | None:
    """An empty or blank Idempotency-Key is no key (as if the header were absent): stored, it
    would make every later blank-key request collide with the first (a 500, a lost report)."""
    if idempotency_key is not None and not idempotency_key.strip():
        return None
    return idempotency_key


def new_message(body: Any, channel: str, seal: ReporterSeal | None) -> ReportSubmitted:
    """The message for ``body``; the reporter's address sealed first (without a seal it is not
    kept), so neither the message, the outbox nor the report row ever holds it in clear."""
    return ReportSubmitted(
        channel=channel,  # type: ignore[arg-type]
        urls=body.urls,
        description=body.description,
        reporter_email=keep_address(seal, getattr(body, "reporter_email", None)),
        partner_reference=getattr(body, "partner_reference", None),
        partner_country=getattr(body, "partner_country", None),
    )


def record_job(msg: ReportSubmitted, idempotency_key: str | None) -> Callable[[SqlUnitOfWork], str]:
    """The job that records ``msg`` (or finds the report an earlier request with the same key
    made: in the database, or earlier in the same batch, which the session sees) and returns
    the report's id. It never commits: its caller does."""

    def job(uow: SqlUnitOfWork) -> str:
        if idempotency_key:
            existing = uow.reports.id_for_idempotency_key(idempotency_key)
            if existing is not None:
                return existing
        report_id = uow.reports.add(msg, idempotency_key=idempotency_key)
        uow.enqueue([Outgoing("reports.submitted", msg)])
        return report_id

    return job


def committer(state: Any) -> GroupCommitter | None:
    """The process's group committer for report intake (on ``app.state``, made on first use),
    or None when ``HOTLINE_INTAKE_GROUP_COMMIT`` is off."""
    settings = state.system.settings
    if not getattr(settings, "intake_group_commit", True):
        return None
    with _committer_lock:
        found: GroupCommitter | None = getattr(state, "intake_committer", None)
        if found is None:
            found = state.intake_committer = GroupCommitter(
                state.system.request_sessions(), max_batch=getattr(settings, "intake_batch_max", 200),
                name="intake-group-commit")
    return found


def record_now(committer: GroupCommitter, msg: ReportSubmitted, idempotency_key: str | None) -> str:
    """From a worker thread: wait for the commit that holds the report."""
    return committer.submit(record_job(msg, idempotency_key)).result()


async def record(committer: GroupCommitter, msg: ReportSubmitted, idempotency_key: str | None) -> str:
    """From the event loop: wait for the commit without holding a thread."""
    return await committer.submit_async(record_job(msg, idempotency_key))


class IntakePressure:
    """"Is report intake in a burst?" for the embedded runtime's stages (``EmbeddedRuntime``
    ``yield_to``): true while reports arrive faster than ``rate`` a second, measured over
    windows of ``window`` seconds from the group committer's ``submitted`` count.

    A rate and not "a request is waiting": at the steady 50 reports/s the notice-latency
    target is measured at, requests overlap often enough that "waiting" would hold the stages
    back all the time; a burst of hundreds a second is what one GIL cannot serve while the
    stages run. Without group commit (``HOTLINE_INTAKE_GROUP_COMMIT=false``) there is no
    committer to count and this is always false. Called from several stage threads: cheap
    (one lock, one clock read) and at most one sample per window."""

    def __init__(self, state: Any, rate: float, window: float = 0.25) -> None:
        self.state = state
        self.rate = rate
        self.window = window
        self._lock = threading.Lock()
        self._at = 0.0
        self._count = 0
        self._busy = False

    def __call__(self) -> bool:
        found: GroupCommitter | None = getattr(self.state, "intake_committer", None)
        if found is None or self.rate <= 0:
            return False
        now = time.monotonic()
        with self._lock:
            elapsed = now - self._at
            if elapsed >= self.window:
                count = found.submitted
                self._busy = self._at > 0 and (count - self._count) / elapsed >= self.rate
                self._at, self._count = now, count
            return self._busy
