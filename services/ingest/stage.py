"""Ingest: validate a raw report, normalize its URLs, deduplicate them into items.

A URL that is already an open item is linked to it (the new report joins the
item's report list and timeline) instead of creating new work. Invalid URLs
are recorded on the report with the reason and published to
``reports.rejected``; a report without a single usable URL is rejected whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from hotline.kernel.clock import now
from hotline.kernel.messages import REJECTED, InvalidMessage, Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.states import ItemState
from hotline.storage.reporter_address import ReporterSeal, is_sealed, keep_address
from schemas import Message
from schemas.items import ItemAccepted
from schemas.reports import ReportRejected, ReportSubmitted
from services.ingest.hosts import accept_url
from services.ingest.urls import UrlRejected

MAX_URLS_PER_REPORT = 500


@dataclass
class IngestStage:
    # Host names the operator's hosting file vouches for (accepted although not under a
    # public suffix); see ``services.ingest.hosts``.
    operator_hosts: frozenset[str] = field(default_factory=frozenset)
    # Seals a reporter address that a producer put on the topic in clear (our own channels
    # seal it before); None: such an address is not kept (hotline.storage.reporter_address).
    reporter_seal: ReporterSeal | None = None

    name: ClassVar[str] = "ingest"
    inputs: ClassVar[tuple[str, ...]] = ("reports.submitted",)
    # Every report is plain database work with plain outputs: many per transaction
    # (hotline.kernel.stage, "Batches").
    batchable: ClassVar[bool] = True

    def handle(self, topic: str, message: Message, uow: UnitOfWork) -> list[Outgoing]:
        assert isinstance(message, ReportSubmitted)
        report = uow.reports.get(message.report_id)
        if report is not None and report.status != "received":
            return self._replay(message, uow)
        if not message.urls:
            raise InvalidMessage("no_urls", "the report contains no URL", message.report_id)
        if len(message.urls) > MAX_URLS_PER_REPORT:
            raise InvalidMessage(
                "too_many_urls",
                f"a report may name at most {MAX_URLS_PER_REPORT} URLs, this one has {len(message.urls)}",
                message.report_id,
            )
        if report is None:
            if message.reporter_email and not is_sealed(message.reporter_email):
                message = message.model_copy(
                    update={"reporter_email": keep_address(self.reporter_seal, message.reporter_email)}
                )
            report = uow.reports.create(message)

        out: list[Outgoing] = []
        seen: dict[str, str] = {}
        for position, raw in enumerate(message.urls):
            try:
                norm, _kind = accept_url(raw, self.operator_hosts)
            except UrlRejected as err:
                uow.reports.link_url(report.id, position, str(raw), None, err.reason)
                out.append(
                    Outgoing(
                        REJECTED,
                        ReportRejected(
                            report_id=report.id,
                            stage=self.name,
                            reason_code=err.code,
                            reason=f"{raw!r}: {err.reason}",
                            payload={"report_id": report.id, "url": raw, "position": position},
                            source_topic=topic,
                        ),
                    )
                )
                continue
            if norm.url in seen:  # same URL twice in one report
                uow.reports.link_url(report.id, position, raw, seen[norm.url])
                continue
            item = uow.items.open_for_url(norm.url)
            if item is None:
                # Its rows go out with the batch's commit (one flush for all its reports); a
                # lost race on the URL fails that commit, and the retry links.
                item = uow.items.create_deferred(norm.url)
                uow.items.add_event(item.id, self.name, "received", f"reported in {report.id} via {message.channel}")
                uow.reports.link_url(report.id, position, raw, item.id)
                out.append(Outgoing("items.accepted", ItemAccepted(item_id=item.id, url=norm.url, report_ids=[report.id])))
            else:
                item.last_seen = now()
                uow.reports.link_url(report.id, position, raw, item.id)
                uow.items.add_event(
                    item.id, self.name, "reported_again", f"also reported in {report.id}; linked to the open item"
                )
            seen[norm.url] = item.id

        if not seen:
            report.status = "rejected"
            report.reason = "no URL in the report could be processed"
        else:
            report.status = "accepted"
        return out

    def _replay(self, message: ReportSubmitted, uow: UnitOfWork) -> list[Outgoing]:
        """A redelivered report: publish again what it led to (downstream stages are idempotent)."""
        out: list[Outgoing] = []
        for link in uow.reports.urls(message.report_id):
            if link.item_id is None:
                continue
            item = uow.items.get(link.item_id)
            if item is not None and item.state == ItemState.RECEIVED:
                out.append(
                    Outgoing(
                        "items.accepted",
                        ItemAccepted(item_id=item.id, url=item.url, report_ids=uow.items.report_ids(item.id)),
                    )
                )
        return out
