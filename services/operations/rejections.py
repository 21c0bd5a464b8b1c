"""Rejected reports and parked messages, and what an operator can do about them.

Every ``reports.rejected`` message a stage produces is kept with its original payload in the
``rejections`` table (``hotline.runtime.steps.keep_rejections``, in the stage's transaction):

- a **rejected report** (bad input: a URL that cannot be on the internet, no URL, a malformed
  message) can be **resubmitted** once the operator fixed it: the URLs they enter become a new
  report (``reports.submitted``, the same channel, description and reporter), and the rejection
  names it;
- a **parked message** (``processing_failed``: a stage gave up after its retries) can be
  **re-driven**: published again, unchanged, to the topic it came from (after the cause, an
  outage or a bug, was fixed); if it fails again it is parked again, as a new row;
- either can be **dismissed** with a note (nothing more to do).

Each action is taken once (row lock; a resolved row answers 409) and audited with the
operator's name. The caller commits (the messages go out through the outbox with it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from hotline.kernel.messages import Outgoing
from hotline.storage.models import Rejection
from hotline.storage.unit_of_work import SqlUnitOfWork
from schemas.reports import ReportSubmitted
from schemas.topics import TOPICS
from services.operations.logic import OperationRefused

PARKED = "processing_failed"
MAX_URLS = 500


@dataclass(frozen=True)
class RejectionRow:
    row: Rejection
    parked: bool
    urls: list[str]  # what a resubmission starts from
    actions: tuple[str, ...]

    @property
    def payload_text(self) -> str:
        return json.dumps(self.row.payload, indent=2, ensure_ascii=False, default=str)

    def as_json(self) -> dict[str, Any]:
        r = self.row
        return {"id": r.id, "at": r.at.isoformat(), "stage": r.stage, "source_topic": r.source_topic,
                "report_id": r.report_id, "item_id": r.item_id, "reason_code": r.reason_code,
                "reason": r.reason, "payload": r.payload, "parked": self.parked, "actions": list(self.actions)}


def _urls(payload: Any) -> list[str]:
    if isinstance(payload, dict):
        if isinstance(payload.get("urls"), list):
            return [str(u) for u in payload["urls"]]
        if isinstance(payload.get("url"), str):
            return [payload["url"]]
    return []


def _row(r: Rejection) -> RejectionRow:
    parked = r.reason_code == PARKED
    actions: list[str] = []
    if r.source_topic in TOPICS and isinstance(r.payload, dict) and parked:
        actions.append("redrive")
    if not parked or r.source_topic == "reports.submitted":
        actions.append("resubmit")
    actions.append("dismiss")
    return RejectionRow(r, parked, _urls(r.payload), tuple(actions))


def unresolved(store: SqlUnitOfWork) -> list[RejectionRow]:
    """Rejections and parked messages no operator resolved yet, newest first."""
    return [_row(r) for r in store.rejections.unresolved()]


def _claim(store: SqlUnitOfWork, rejection_id: int, action: str) -> RejectionRow:
    row = store.rejections.lock(rejection_id)
    if row is None:
        raise OperationRefused(404, f"no rejection {rejection_id}")
    if row.resolved_at is not None:
        raise OperationRefused(409, f"rejection {rejection_id} was already resolved by {row.resolved_by}: "
                                    f"{row.resolution}")
    entry = _row(row)
    if action not in entry.actions:
        raise OperationRefused(409, f"rejection {rejection_id} ({row.reason_code}) cannot be {action}n")
    return entry


def resubmit(store: SqlUnitOfWork, rejection_id: int, *, operator: str, urls_text: str) -> list[Outgoing]:
    """A new report with the URLs the operator fixed (one a line), like the original otherwise."""
    entry = _claim(store, rejection_id, "resubmit")
    urls = [u.strip() for u in urls_text.splitlines() if u.strip()]
    if not urls or len(urls) > MAX_URLS:
        raise OperationRefused(422, f"urls: give between 1 and {MAX_URLS} URLs, one a line")
    original: dict[str, Any] = entry.row.payload if isinstance(entry.row.payload, dict) else {}
    if entry.row.report_id and not original.get("channel"):
        report = store.reports.get(entry.row.report_id)
        if report is not None:
            original = {"channel": report.channel, "description": report.description,
                        "reporter_email": report.reporter_email, "partner_reference": report.partner_reference,
                        "partner_country": report.partner_country}
    try:
        message = ReportSubmitted(
            channel=original.get("channel") or "api", urls=urls, description=original.get("description"),
            reporter_email=original.get("reporter_email"), partner_reference=original.get("partner_reference"),
            partner_country=original.get("partner_country"),
        )
    except ValidationError as exc:
        raise OperationRefused(422, f"the resubmitted report is not valid: {exc.errors()[0]['msg']}") from exc
    store.reports.create(message)
    store.rejections.resolve(entry.row, operator, f"resubmitted as report {message.report_id}")
    store.audit.append(operator, "rejection_resubmitted", str(rejection_id),
                       f"{entry.row.report_id or '-'} -> {message.report_id}: {len(urls)} URL(s)")
    return [Outgoing("reports.submitted", message)]


def redrive(store: SqlUnitOfWork, rejection_id: int, *, operator: str) -> None:
    """Publish the parked message again, unchanged, to its topic (through the outbox)."""
    entry = _claim(store, rejection_id, "redrive")
    topic = str(entry.row.source_topic)
    model = TOPICS[topic].model
    try:
        message = model.model_validate(entry.row.payload)
    except ValidationError as exc:
        raise OperationRefused(409, f"the parked message is no valid {topic} message any more "
                                    f"({exc.errors()[0]['msg']}): dismiss it") from exc
    store.enqueue([Outgoing(topic, message)])
    store.rejections.resolve(entry.row, operator, f"re-driven to {topic}")
    store.audit.append(operator, "parked_redriven", str(rejection_id),
                       f"{topic}; report {entry.row.report_id or '-'}, item {entry.row.item_id or '-'}")


def dismiss(store: SqlUnitOfWork, rejection_id: int, *, operator: str, note: str) -> None:
    entry = _claim(store, rejection_id, "dismiss")
    note = note.strip()[:2000]
    store.rejections.resolve(entry.row, operator, "dismissed" + (f": {note}" if note else ""))
    store.audit.append(operator, "rejection_dismissed", str(rejection_id), note)
