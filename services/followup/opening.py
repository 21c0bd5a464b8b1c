"""Opening a follow-up: called by notify in the transaction that records a notice ``sent``."""

from __future__ import annotations

from datetime import datetime

from hotline.kernel.ports import UnitOfWork
from hotline.storage.followups import new_followup
from schemas.notices import TakedownNotice


def open_followup(uow: UnitOfWork, notice: TakedownNotice, sent_at: datetime) -> None:
    """Follow the notice's URL up until the content is gone. The first re-check is planned by
    the scheduler (status ``new``), which knows the interval; a second notice for an item
    already followed up changes nothing (the first notice's time stays the start)."""
    item = uow.items.get(notice.item_id)
    uow.followups.open(
        new_followup(
            item_id=notice.item_id, notice_id=notice.notice_id, url=notice.url, hoster=notice.hoster,
            country=notice.country, abuse_email=notice.abuse_email,
            matched=[
                {k: v for k, v in {"url": i.url, "sha256": i.sha256, "md5": i.md5, "pdq": i.pdq}.items() if v}
                for i in notice.images
            ],
            first_report_at=item.first_seen if item is not None else sent_at,
            first_notice_at=sent_at,
            # the ladder's rungs, from the hosting look-up (RDAP or the hosting file)
            upstream_abuse=notice.hosting.upstream_abuse if notice.hosting else None,
            registrar_abuse=notice.hosting.registrar_abuse if notice.hosting else None,
        )
    )
