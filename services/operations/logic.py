"""Notices that need an operator, and what an operator can do about them.

Notify never sends a notice twice on its own (``services/notify/stage.py``), so three kinds of
notice wait for a person:

- ``delivery_unknown``: the mail server may have the notice but never confirmed it; the item
  is ``notice_unconfirmed``. The operator checks the SMTP log by the Message-ID and then
  **marks it delivered** (it is in the log), **resends** it (it is not), or **sends it
  elsewhere** (to another abuse address);
- ``refused``: the server refused it for good (a 5xx); the item went to the analysts. The
  operator **resends** it (the hoster fixed its mailbox) or **sends it elsewhere**;
- ``failed`` for longer than ``notice_failed_alert_seconds``: notify keeps retrying it (an
  outage); the operator can only **send it elsewhere** (a resend is what notify is doing).

Notices of items that are closed (removed, offline, not illegal) are not listed: nothing more
needs sending. Each action is allowed once: it takes the notice's row lock, checks that the
notice is still in a state the action resolves, and refuses (409) otherwise, so a double click
never sends twice. Each writes an audit row (the operator's account name as actor) and an item
event. The messages to publish are returned; the caller enqueues them in the same unit of work
(transactional outbox) and commits.

A resend publishes the same ``TakedownNotice`` again, rebuilt from the item's stored
classification by classify's own ``takedown_notice`` (same notice id, same Message-ID, same
text); sending elsewhere publishes it under a new notice id ``ntd-<item>-<n>`` to the new
address and closes the old notice as ``superseded`` (notify never sends a superseded notice).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from hotline.kernel.messages import Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.stage import move_item
from hotline.kernel.states import FINAL, ItemState, can_transition
from hotline.storage.models import Item, Notice
from schemas.items import ItemClassified
from schemas.notices import NoticeEvent, TakedownNotice
from services.classify.stage import takedown_notice
from services.escalate.forwards import retry

STAGE = "operations"
ACTIONS = ("mark_delivered", "resend", "send_elsewhere")

# Which action resolves a notice in which status.
ALLOWED: dict[str, frozenset[str]] = {
    "delivery_unknown": frozenset({"mark_delivered", "resend", "send_elsewhere"}),
    "refused": frozenset({"resend", "send_elsewhere"}),
    "failed": frozenset({"send_elsewhere"}),
}

_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")


class OperationRefused(Exception):
    """The action cannot be applied; ``status`` is the HTTP code (404, 409, 422)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class PendingNotice:
    """One row of the operators' list."""

    notice: Notice
    item: Item
    why: str  # what happened, in words
    last_error: str  # the latest reason recorded on the item's timeline for this notice
    age: timedelta  # since the notice was first tried
    actions: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        n, i = self.notice, self.item
        return {
            "notice_id": n.id, "status": n.status, "item_id": i.id, "item_state": i.state, "url": i.url,
            "hoster": n.hoster, "abuse_email": n.abuse_email, "message_id": n.message_id,
            "created_at": n.created_at.isoformat(), "age_seconds": int(self.age.total_seconds()),
            "why": self.why, "last_error": self.last_error, "actions": list(self.actions),
        }


_WHY = {
    "delivery_unknown": "the mail server may have it but never confirmed it: check the SMTP log by its Message-ID",
    "refused": "the mail server refused it for good",
    "failed": "notify keeps retrying it: the mail server has not taken it",
}


def _last_error(uow: UnitOfWork, notice: Notice) -> str:
    """The latest timeline entry notify wrote about the item (the server's answer, the reason)."""
    for event in reversed(list(uow.items.events(notice.item_id))):
        if event.stage == "notify" or event.kind in (ItemState.NOTICE_UNCONFIRMED, ItemState.AWAITING_ASSESSMENT):
            return event.detail
    return ""


def needing_operator(uow: UnitOfWork, at: datetime, failed_after_seconds: int) -> list[PendingNotice]:
    """Notices an operator should resolve, oldest first."""
    out: list[PendingNotice] = []
    for notice in uow.notices.in_status(*ALLOWED):
        item = uow.items.get(notice.item_id)
        if item is None or item.state in FINAL:
            continue
        age = at - notice.created_at
        if notice.status == "failed" and age.total_seconds() < failed_after_seconds:
            continue
        out.append(PendingNotice(notice, item, _WHY[notice.status], _last_error(uow, notice), age,
                                 tuple(a for a in ACTIONS if a in ALLOWED[notice.status])))
    return out


def _claim(uow: UnitOfWork, notice_id: str, action: str) -> tuple[Notice, Item]:
    notice = uow.notices.lock(notice_id)
    if notice is None:
        raise OperationRefused(404, f"no notice {notice_id}")
    if action not in ALLOWED.get(notice.status, frozenset()):
        allowed = ALLOWED.get(notice.status)
        hint = f"; it allows {', '.join(sorted(allowed))}" if allowed else "; there is nothing left to resolve"
        raise OperationRefused(409, f"notice {notice_id} is {notice.status}: {action.replace('_', ' ')} "
                                    f"does not apply{hint}")
    item = uow.items.get(notice.item_id)
    if item is None:
        raise OperationRefused(404, f"notice {notice_id} has no item {notice.item_id}")
    if item.state in FINAL:
        raise OperationRefused(409, f"item {item.id} is {item.state}: nothing more needs sending")
    return notice, item


def _rebuild(item: Item, notice_id: str, abuse_email: str | None = None, based_on: str | None = None) -> TakedownNotice:
    classified = ItemClassified.model_validate(item.classification) if item.classification else None
    message = takedown_notice(classified, notice_id, abuse_email, based_on) if classified else None
    if message is None:
        raise OperationRefused(409, f"item {item.id} has no classification that calls for a takedown notice: "
                                    "it cannot be rebuilt")
    return message


def _queue_item(uow: UnitOfWork, item: Item, reason: str) -> None:
    """The item waits for notify again (it may already: a notice that notify is retrying)."""
    if item.state == ItemState.NOTICE_QUEUED:
        uow.items.add_event(item.id, STAGE, ItemState.NOTICE_QUEUED, reason)
    elif can_transition(item.state, ItemState.NOTICE_QUEUED):
        uow.items.set_state(item, ItemState.NOTICE_QUEUED, reason, STAGE)
    else:
        raise OperationRefused(409, f"item {item.id} is {item.state}: it cannot be queued for a notice again")


def mark_delivered(uow: UnitOfWork, notice_id: str, *, operator: str, at: datetime) -> list[Outgoing]:
    """The operator found the notice in the SMTP log: it was delivered."""
    notice, item = _claim(uow, notice_id, "mark_delivered")
    notice.status = "sent"
    notice.sent_at = at
    reason = (f"takedown notice to {notice.abuse_email} ({notice.hoster}) confirmed delivered by {operator} "
              f"from the SMTP log ({notice.message_id}); removal expected within 24 hours")
    move_item(uow, item.id, ItemState.NOTICE_SENT, reason, STAGE)
    uow.audit.append(operator, "notice_marked_delivered", notice.id, notice.message_id)
    return [Outgoing("notices.events", NoticeEvent(
        event_id=f"{notice.id}:sent", item_id=item.id, kind="sent", notice_id=notice.id, detail=reason, at=at,
    ))]


def resend(uow: UnitOfWork, notice_id: str, *, operator: str) -> list[Outgoing]:
    """The operator found the notice was not delivered: notify sends the same notice again."""
    notice, item = _claim(uow, notice_id, "resend")
    message = _rebuild(item, notice.id, notice.abuse_email)
    was = notice.status
    notice.status = "failed"  # not delivered: notify's next attempt sends it
    _queue_item(uow, item, f"{operator} asked for the notice to {notice.abuse_email} to be sent again "
                           f"(it was {was}; {notice.message_id})")
    uow.audit.append(operator, "notice_resent", notice.id, f"{was} -> failed; to {notice.abuse_email}")
    return [Outgoing("notices.ntd", message)]


def valid_address(address: str) -> str:
    """The address, stripped, or OperationRefused(422): one plain mailbox, nothing that could
    smuggle another header or recipient into the e-mail."""
    address = address.strip()
    if len(address) > 320 or not _ADDRESS.match(address):
        raise OperationRefused(422, "abuse_email: give one e-mail address such as abuse@hoster.example")
    return address


def send_elsewhere(uow: UnitOfWork, notice_id: str, *, operator: str, abuse_email: str) -> list[Outgoing]:
    """Send the notice to another abuse address: a new notice, the old one superseded."""
    address = valid_address(abuse_email)
    notice, item = _claim(uow, notice_id, "send_elsewhere")
    if address.lower() == notice.abuse_email.lower():
        raise OperationRefused(422, f"abuse_email: {address} is the address of this notice; resend it instead")
    taken = {n.id for n in uow.notices.for_item(item.id)}
    n = 2
    while f"ntd-{item.id}-{n}" in taken:
        n += 1
    new_id = f"ntd-{item.id}-{n}"
    message = _rebuild(item, new_id, address, based_on=notice.id)  # an item may have a notice per hoster
    was = notice.status
    notice.status = "superseded"
    _queue_item(uow, item, f"{operator} sent the notice to {address} instead of {notice.abuse_email} "
                           f"(it was {was}): new notice {new_id}")
    uow.audit.append(operator, "notice_sent_elsewhere", notice.id, f"{was} -> superseded by {new_id} to {address}")
    return [Outgoing("notices.ntd", message)]


# -- deliveries to partner hotlines ------------------------------------------------------
#
# Forwards and status updates to partners are queues (``services.escalate.forwards``): a
# ``pending`` one is being retried with back-off (nothing to do but watch its last error); a
# ``refused`` one waits for an operator, who fixes the partner's credentials (the token
# variable, the partners file) and **retries** it: it goes back to pending, due at once.

DeliveryKind = Literal["forward", "update"]


@dataclass(frozen=True)
class PendingDelivery:
    """One forward or status update not delivered (yet) to a partner hotline."""

    kind: DeliveryKind
    id: str
    country: str
    partner: str
    status: str
    attempts: int
    last_error: str
    next_attempt_at: datetime | None
    created_at: datetime | None
    item_id: str | None
    what: str  # the item URL (forward) or the step (update)

    def as_json(self) -> dict[str, object]:
        return {
            "kind": self.kind, "id": self.id, "country": self.country, "partner": self.partner,
            "status": self.status, "attempts": self.attempts, "last_error": self.last_error,
            "next_attempt_at": self.next_attempt_at.isoformat() if self.next_attempt_at else None,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "item_id": self.item_id, "what": self.what, "actions": ["retry"] if self.status == "refused" else [],
        }


def undelivered(uow: UnitOfWork) -> list[PendingDelivery]:
    """Pending and refused forwards and partner status updates: refused first, then oldest first."""
    rows: list[PendingDelivery] = []
    for f in uow.forwards.in_status("pending", "refused"):
        item = uow.items.get(f.item_id)
        rows.append(PendingDelivery("forward", f.id, f.country, f.partner, f.status, f.attempts, f.last_error or "",
                                    f.next_attempt_at, f.created_at, f.item_id, item.url if item else ""))
    for u in uow.partner_updates.in_status("pending", "refused"):
        rows.append(PendingDelivery("update", u.id, u.country, u.country, u.status, u.attempts, u.last_error or "",
                                    u.next_attempt_at, u.created_at, u.item_id, u.action))
    return sorted(rows, key=lambda r: (r.status != "refused", r.created_at is None, r.created_at or datetime.min, r.id))


def retry_delivery(uow: UnitOfWork, kind: str, delivery_id: str, *, operator: str, at: datetime) -> list[Outgoing]:
    """A refused forward or status update goes back to pending, due at once (the escalate
    dispatcher publishes it at its next tick). Only a refused one: 409 otherwise."""
    row = uow.forwards.lock(delivery_id) if kind == "forward" else uow.partner_updates.lock(delivery_id)
    if row is None:
        raise OperationRefused(404, f"no {kind} {delivery_id}")
    if row.status != "refused":
        raise OperationRefused(409, f"{kind} {delivery_id} is {row.status}: only a refused one can be retried")
    retry(row, at)
    uow.audit.append(operator, f"{kind}_retried", delivery_id, "refused -> pending")
    item_id = row.item_id
    if kind == "forward" and item_id:
        uow.items.add_event(item_id, STAGE, "forward_retried", f"{operator} retried forward {delivery_id} "
                                                              f"(last error: {row.last_error or '-'})")
    return []
