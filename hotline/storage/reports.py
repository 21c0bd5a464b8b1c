"""Reports: what reached the hotline, and which item each of its URLs became."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from hotline.kernel.ports import AuditTrail
from hotline.storage.models import Report, ReportUrl
from hotline.storage.reporter_address import is_sealed

if TYPE_CHECKING:
    from hotline.kernel.messages import InvalidMessage
    from schemas.reports import ReportSubmitted


REPORTS = cast(Table, Report.__table__)  # for Core statements


class RecordsRejections:
    """How a rejection is recorded, shared by the SQL and in-memory repositories: a
    rejected report must be visible as rejected, whatever stage threw it out."""

    audit: AuditTrail

    def get(self, report_id: str) -> Report | None:
        raise NotImplementedError

    def _add(self, report: Report) -> None:
        raise NotImplementedError

    def record_rejection(self, stage: str, err: InvalidMessage) -> None:
        if err.report_id is None:
            self.audit.append(stage, "message_rejected", "-", f"{err.code}: {err.reason}")
            return
        report = self.get(err.report_id)
        if report is None:
            self._add(Report(id=err.report_id, channel="api", status="rejected", reason=err.reason))
        elif report.status == "received":  # one already accepted stays so
            report.status = "rejected"
            report.reason = err.reason
        self.audit.append(stage, "report_rejected", err.report_id, f"{err.code}: {err.reason}")


class SqlReports(RecordsRejections):
    def __init__(self, session: Session, audit: AuditTrail) -> None:
        self.session = session
        self.audit = audit
        # Rows ``add`` buffered (report id -> row) and their idempotency keys (key -> id),
        # inserted by ``flush_added`` (the unit of work's flush and commit).
        self._added: dict[str, dict[str, Any]] = {}
        self._added_keys: dict[str, str] = {}
        # Report objects this unit of work added to the session (``create``, ``_add``): they
        # may still be pending (not flushed), so ``get`` answers them itself.
        self._new: dict[str, Report] = {}

    def get(self, report_id: str) -> Report | None:
        """The report, without flushing the session first: a report row can only be pending in
        this session as one of ``_new`` (every ``Report`` added goes through this repository),
        so no other pending change can alter the answer. Autoflush here cost ingest a flush per
        message of a batch (each report's ``get`` sent the previous report's rows out on their
        own); now the unit of work's commit sends all of them in one flush."""
        new = self._new.get(report_id)
        if new is not None:
            return new
        with self.session.no_autoflush:
            return self.session.get(Report, report_id)

    def by_idempotency_key(self, key: str) -> Report | None:
        self.flush_added()
        return self.session.scalar(select(Report).where(Report.idempotency_key == key))

    def id_for_idempotency_key(self, key: str) -> str | None:
        """The id of the report recorded with ``key``: one ``add`` buffered in this unit of
        work, else one in the database (a column, no ORM object)."""
        found = self._added_keys.get(key)
        if found is not None:
            return found
        return self.session.scalar(select(Report.id).where(Report.idempotency_key == key))

    def create(self, msg: ReportSubmitted, idempotency_key: str | None = None) -> Report:
        """A new report as an ORM object, inserted at the next flush (the commit's, for the ingest
        stage: its status is final by then, so one INSERT and no UPDATE)."""
        report = new_report(msg, idempotency_key)
        self._add(report)
        return report

    def add(self, msg: ReportSubmitted, idempotency_key: str | None = None) -> str:
        """Record a new report without an ORM object: its row is buffered and goes out with
        every other row ``add`` buffered in this unit of work, in one multi-row INSERT, at the
        unit of work's flush or commit (group commit: hundreds of reports, one statement and
        no per-object bookkeeping). Until then the report is visible to
        ``id_for_idempotency_key`` only (and to ``by_idempotency_key``, which flushes first).
        Returns the report's id."""
        row = report_row(msg, idempotency_key)
        self._added[msg.report_id] = row
        if idempotency_key:
            self._added_keys[idempotency_key] = msg.report_id
        return msg.report_id

    def flush_added(self) -> None:
        """Insert the rows ``add`` buffered (one executemany: a multi-row statement)."""
        if not self._added:
            return
        rows = list(self._added.values())
        self._added.clear()
        self._added_keys.clear()
        self.session.execute(insert(REPORTS), rows)

    def discard_added(self) -> None:
        self._added.clear()
        self._added_keys.clear()
        self._new.clear()

    def forget_new(self) -> None:
        """The unit of work committed: the reports it added are in the database now, and
        ``get`` asks the session for them like for any other (a reused unit of work sees
        what other transactions did since)."""
        self._new.clear()

    def urls(self, report_id: str) -> Sequence[ReportUrl]:
        return self.session.scalars(
            select(ReportUrl).where(ReportUrl.report_id == report_id).order_by(ReportUrl.position)
        ).all()

    def link_url(
        self, report_id: str, position: int, url_as_reported: str, item_id: str | None,
        rejected_reason: str | None = None,
    ) -> None:
        self.session.add(
            ReportUrl(
                report_id=report_id, position=position, url_as_reported=url_as_reported,
                item_id=item_id, rejected_reason=rejected_reason,
            )
        )

    def _add(self, report: Report) -> None:
        self.session.add(report)
        self._new[report.id] = report

    def from_partners(self, report_ids: Sequence[str]) -> list[Report]:
        """The partner-forwarded reports among ``report_ids``, in their order: one ``IN`` query
        instead of a ``get`` per report (the escalate stage asks for every item's reports, and
        almost none came from a partner)."""
        if not report_ids:
            return []
        q = select(Report).where(Report.id.in_(list(report_ids)), Report.channel == "partner",
                                 Report.partner_country.is_not(None))
        found = {r.id: r for r in self.session.scalars(q)}
        return [found[i] for i in dict.fromkeys(report_ids) if i in found]


def new_report(msg: ReportSubmitted, idempotency_key: str | None) -> Report:
    return Report(**report_row(msg, idempotency_key))


def report_row(msg: ReportSubmitted, idempotency_key: str | None) -> dict[str, Any]:
    """The ``reports`` row of a new report, as column values (``new_report``, Core inserts)."""
    return dict(
        id=msg.report_id,
        channel=msg.channel,
        description=msg.description,
        # Sealed at the edge (hotline.storage.reporter_address); anything else is dropped
        # here, so no path can put a reporter's address in the database in clear.
        reporter_email=msg.reporter_email if is_sealed(msg.reporter_email) else None,
        partner_reference=msg.partner_reference,
        partner_country=msg.partner_country.upper() if msg.channel == "partner" and msg.partner_country else None,
        status="received",
        idempotency_key=idempotency_key,
        submitted_at=msg.submitted_at,
    )
