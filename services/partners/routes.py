"""The partner hotlines' API (role ``partner``; an account bound to its country by
``hotline users add NAME --role partner --country DE``). A partner sees and updates only what
concerns its own country:

- ``GET /api/v1/partner/forwards``: the forwards to its country, newest first, with their
  delivery status and what it reported back;
- ``POST /api/v1/partner/forwards/{forward_id}/status``: an ICCAM action code on one of them
  (``services.partners.logic``); another country's forward is 403, an unknown one 404;
- ``GET /api/v1/partner/reports/{report_id}``: a report it forwarded to us, each URL with our
  state, its ICCAM code and the status updates sent back; another partner's report is 404
  (nothing says it exists).

Reports come in through ``POST /api/v1/partner/reports`` (``services.ingest.routes``). An admin
(no country) may call these for any country.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from hotline.kernel.clock import now
from hotline.kernel.states import ItemState
from hotline.storage.models import Forward
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import Caller, get_store, require_role
from services.partners.iccam import STATE_ACTION
from services.partners.logic import Action, StatusRefused, record_status

router = APIRouter(tags=["partners"])
StoreDep = Annotated[SqlUnitOfWork, Depends(get_store)]
Partner = Annotated[Caller, Depends(require_role("partner"))]


class StatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Action
    note: str | None = Field(default=None, max_length=2000)


def _country(caller: Caller) -> str | None:
    """The caller's country; None for an admin (every country). A partner account without a
    country (made before accounts named one) may do nothing."""
    if caller.role != "partner":
        return None
    if not caller.country:
        raise HTTPException(403, f"the partner account {caller.name} has no country: "
                                 "create it with hotline users add NAME --role partner --country XX")
    return caller.country.upper()


def _forward_json(f: Forward, url: str | None) -> dict[str, Any]:
    return {
        "forward_id": f.id, "item_id": f.item_id, "url": url, "country": f.country, "status": f.status,
        "created_at": f.created_at.isoformat() if f.created_at else None,
        "sent_at": f.sent_at.isoformat() if f.sent_at else None,
        "partner_status": f.partner_status,
        "partner_status_at": f.partner_status_at.isoformat() if f.partner_status_at else None,
    }


@router.get("/api/v1/partner/forwards")
def list_forwards(store: StoreDep, caller: Partner, country: str | None = None) -> dict[str, Any]:
    """The forwards to the caller's country (an admin: ``?country=DE``, or all)."""
    own = _country(caller)
    wanted = own or (country.upper() if country else None)
    rows = store.forwards.for_country(wanted) if wanted else store.forwards.in_status("pending", "sent", "refused")
    out = []
    for f in rows:
        item = store.items.get(f.item_id)
        out.append(_forward_json(f, item.url if item else None))
    return {"country": wanted, "forwards": out}


@router.post("/api/v1/partner/forwards/{forward_id}/status")
def post_status(forward_id: str, body: StatusRequest, store: StoreDep, caller: Partner) -> dict[str, Any]:
    """What the partner did with a forward, as an ICCAM action code (CR, CU, MO, NI, LEA, ISP).
    The same code twice has the effect of once (``duplicate``: true)."""
    try:
        result = record_status(store, forward_id, action=body.action, note=body.note, by=caller.name,
                               country=_country(caller), at=now())
    except StatusRefused as exc:
        store.rollback()
        raise HTTPException(exc.status, exc.reason) from exc
    store.enqueue(result.out)
    store.commit()
    return result.as_json()


@router.get("/api/v1/partner/reports/{report_id}")
def get_report(report_id: str, store: StoreDep, caller: Partner) -> dict[str, Any]:
    """A report the caller's hotline forwarded to us: each URL's state, ICCAM code and the
    status updates sent back."""
    own = _country(caller)
    report = store.reports.get(report_id)
    if report is None or report.channel != "partner" or (own is not None and report.partner_country != own):
        raise HTTPException(404, f"no report {report_id} from your hotline")
    updates = store.partner_updates.for_report(report_id)
    items: list[dict[str, Any]] = []
    for link in store.reports.urls(report_id):
        item = store.items.get(link.item_id) if link.item_id else None
        if item is None:
            items.append({"item_id": None, "url": link.url_as_reported, "state": "rejected",
                          "reason": link.rejected_reason, "iccam": None, "updates": []})
            continue
        items.append({
            "item_id": item.id, "url": item.url, "state": item.state, "reason": item.reason,
            "iccam": STATE_ACTION.get(ItemState(item.state)),
            "updates": [{"update_id": u.id, "step": u.action, "status": u.status,
                         "sent_at": u.sent_at.isoformat() if u.sent_at else None}
                        for u in updates if u.item_id == item.id],
        })
    return {"report_id": report.id, "partner_reference": report.partner_reference, "country": report.partner_country,
            "status": report.status, "submitted_at": report.submitted_at.isoformat(), "items": items}
