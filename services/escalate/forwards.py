"""Delivery to partner hotlines as a durable queue: forwards (``forwards`` table, topic
``forwards.partner``) and status updates back to a partner that forwarded a report to us
(``partner_updates``, topic ``partners.status``) go through the same machinery.

Why a queue and not ``RetryLater``: a runtime that retries a message blocks its partition
(Kafka) or the stage (embedded) while it waits, so one partner that is down for an hour
would hold up every forward to every other partner. Here a message makes *one* attempt and
the stage moves on:

1. ``handle`` records the row from the message (its ``payload`` is the message, so every
   attempt sends the same bytes with the same ``Idempotency-Key``, the row's id) and, when it
   is due and no older row of its group is pending (forwards go in order per item, updates
   in order per report), reserves an attempt: ``attempts`` + 1, ``dispatched_at`` now and
   ``next_attempt_at`` a lease ahead (no second attempt starts while this one is out);
2. the POST runs outside any transaction (``SideEffect``);
3. 2xx: ``sent``. A temporary failure (no answer, 5xx, 429, ...) records ``last_error`` and
   ``next_attempt_at`` = now + back-off (``Backoff``: the base doubling per attempt, capped)
   and returns normally: the forward stays ``pending`` for as long as it takes, never lost.
   A permanent refusal (400/401/403/404/422, the token variable unset, no partner for the
   country) makes it ``refused``: visible on the operations page with its error; the item
   stays where it is until an operator fixes the credentials and retries it (``retry``).

``DeliveryDispatcher`` (a periodic task beside the escalate stage) claims due pending rows
(``dispatched_at``; PostgreSQL ``FOR UPDATE SKIP LOCKED``; a claim not followed by an attempt
within ``redispatch_seconds`` is claimed again) and publishes their stored message through
the outbox; the stage then attempts it. A redelivered message that is not due does nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from hotline.kernel.clock import CURRENT, Clock
from hotline.kernel.messages import InvalidMessage, Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.stage import Result, SideEffect, move_item
from hotline.kernel.states import ItemState
from hotline.storage.models import Forward, PartnerUpdate
from schemas.notices import NoticeEvent, PartnerForward, PartnerStatusUpdate
from services.escalate.partners import (
    DeliveryFailed,
    PartnerDirectory,
    PartnerEntry,
    PartnerGateway,
    StatusGateway,
)

STAGE = "escalate"


@dataclass(frozen=True)
class Backoff:
    """How long to wait after a failed attempt: ``base_seconds`` doubling per attempt, at most
    ``max_seconds`` (``HOTLINE_FORWARD_RETRY_SECONDS``, ``HOTLINE_FORWARD_RETRY_MAX_SECONDS``)."""

    base_seconds: float = 2.0
    max_seconds: float = 3600.0

    def delay(self, attempts: int) -> float:
        """The wait after the ``attempts``-th failed attempt (1, 2, ...)."""
        if attempts <= 0:
            return 0.0
        return float(min(self.base_seconds * 2 ** min(attempts - 1, 60), self.max_seconds))


class Queued(Protocol):
    """The queue columns ``forwards`` and ``partner_updates`` share."""

    id: str
    status: str
    attempts: int
    last_error: str | None
    created_at: Any
    next_attempt_at: datetime | None
    dispatched_at: datetime | None
    sent_at: datetime | None


R = TypeVar("R", Forward, PartnerUpdate)
M = TypeVar("M", PartnerForward, PartnerStatusUpdate)


def retry(row: Queued, at: datetime) -> None:
    """An operator fixed what made the partner refuse: pending again, due at once (the
    dispatcher sends it at its next tick); attempts and the last error are kept."""
    row.status = "pending"
    row.next_attempt_at = at
    row.dispatched_at = None


@dataclass
class Delivery(ABC, Generic[M, R]):
    """One kind of delivery (forwards, status updates): the queue steps, shared; what is sent,
    to where and what success means, per kind."""

    partners: PartnerDirectory
    backoff: Backoff = field(default_factory=Backoff)
    lease_seconds: float = 300.0
    clock: Clock = CURRENT

    topic: ClassVar[str]

    @abstractmethod
    def repo(self, uow: UnitOfWork) -> Any: ...
    @abstractmethod
    def key(self, message: M) -> str: ...
    @abstractmethod
    def create(self, uow: UnitOfWork, message: M, at: datetime) -> R: ...
    @abstractmethod
    def target(self, message: M) -> PartnerEntry | str:
        """Where it goes, or in words why it cannot go anywhere (a permanent refusal)."""
    @abstractmethod
    def send(self, partner: PartnerEntry, message: M) -> object: ...
    @abstractmethod
    def sent(self, uow: UnitOfWork, key: str, attempts: int, message: M, partner: PartnerEntry) -> list[Outgoing]:
        """Recorded ``sent`` (row ``key``, delivered at attempt ``attempts``): what follows."""
    @abstractmethod
    def already_sent(self, uow: UnitOfWork, row: R, message: M) -> list[Outgoing]: ...
    @abstractmethod
    def refused(self, uow: UnitOfWork, row: R, message: M, reason: str) -> list[Outgoing]: ...

    def retrying(self, uow: UnitOfWork, row: R, message: M, reason: str) -> list[Outgoing]:
        return []

    def handle(self, message: M, uow: UnitOfWork) -> Result:
        at = self.clock.now()
        repo = self.repo(uow)
        row: R | None = repo.lock(self.key(message))
        if row is None:
            row = self.create(uow, message, at)
        if row.status == "sent":
            return self.already_sent(uow, row, message)
        if row.status != "pending":
            return []  # refused: waits for an operator's retry
        if row.next_attempt_at is not None and row.next_attempt_at > at:
            return []  # in flight or backing off: the dispatcher publishes it again when due
        if repo.older_pending(row):
            row.dispatched_at = None  # in order: the dispatcher sends it once the older one is done
            return []
        partner = self.target(message)
        if isinstance(partner, str):
            return self._refuse(uow, row, message, partner)
        row.attempts += 1
        row.dispatched_at = at
        row.next_attempt_at = at + timedelta(seconds=self.lease_seconds)
        key = row.id
        return SideEffect(
            act=lambda: self.send(partner, message),
            done=lambda u, _: self._done(u, key, message, partner),
            failed=lambda u, exc: self._failed(u, key, message, exc),
        )

    def _row(self, uow: UnitOfWork, key: str) -> R:
        row: R | None = self.repo(uow).lock(key)
        assert row is not None, f"{key} was reserved before the attempt"
        return row

    def _done(self, uow: UnitOfWork, key: str, message: M, partner: PartnerEntry) -> list[Outgoing]:
        # By id, the row locked by the change itself: loading it (payload JSON and all) first
        # only to move its status cost a statement per delivery.
        attempts = self.repo(uow).mark_sent(key, self.clock.now())
        if attempts is None:  # a concurrent attempt recorded it first
            return self.already_sent(uow, self._row(uow, key), message)
        return self.sent(uow, key, attempts, message, partner)

    def _failed(self, uow: UnitOfWork, key: str, message: M, exc: Exception) -> list[Outgoing]:
        if not isinstance(exc, DeliveryFailed):
            raise exc  # a bug in the gateway: the failure policy decides (the lease keeps it queued)
        row = self._row(uow, key)
        if row.status != "pending":
            return []
        row.last_error = exc.reason
        row.dispatched_at = None
        if exc.permanent:
            return self._refuse(uow, row, message, exc.reason)
        row.next_attempt_at = self.clock.now() + timedelta(seconds=self.backoff.delay(row.attempts))
        return self.retrying(uow, row, message, exc.reason)

    def _refuse(self, uow: UnitOfWork, row: R, message: M, reason: str) -> list[Outgoing]:
        row.status = "refused"
        row.last_error = reason
        row.next_attempt_at = row.dispatched_at = None
        return self.refused(uow, row, message, reason)


@dataclass
class ForwardDelivery(Delivery[PartnerForward, Forward]):
    """Forwards to the partner hotline of the hosting country."""

    gateway: PartnerGateway | None = None

    topic: ClassVar[str] = "forwards.partner"

    def repo(self, uow: UnitOfWork) -> Any:
        return uow.forwards

    def key(self, message: PartnerForward) -> str:
        return message.forward_id

    def create(self, uow: UnitOfWork, message: PartnerForward, at: datetime) -> Forward:
        # Classify forwards only items it has stored. Its id only: the whole row (classification
        # JSON included) is not needed here, and ``sent`` loads it in its own transaction.
        if not uow.items.exists(message.item_id):
            raise InvalidMessage("unknown_item", f"forward {message.forward_id} names no known item {message.item_id!r}")
        partner = self.partners.get(message.country)
        fwd = uow.forwards.open(message.forward_id, message.item_id, message.country.upper(),
                                partner.name if partner else message.partner_name)
        fwd.payload = message.model_dump(mode="json")
        fwd.created_at = at
        fwd.next_attempt_at = at
        return fwd

    def target(self, message: PartnerForward) -> PartnerEntry | str:
        return self.partners.get(message.country) or f"no partner hotline is registered for {message.country}"

    def send(self, partner: PartnerEntry, message: PartnerForward) -> object:
        assert self.gateway is not None
        return self.gateway.deliver(partner, message)

    def sent(self, uow: UnitOfWork, key: str, attempts: int, message: PartnerForward,
             partner: PartnerEntry) -> list[Outgoing]:
        reason = f"forwarded to {partner.name} ({partner.country}), which handles takedown there"
        if attempts > 1:
            reason += f" (delivered at attempt {attempts})"
        move_item(uow, message.item_id, ItemState.FORWARDED, reason, STAGE)
        uow.audit.append(STAGE, "forwarded", message.forward_id, partner.name)
        return [self._event(message, "forwarded", reason)]

    def already_sent(self, uow: UnitOfWork, row: Forward, message: PartnerForward) -> list[Outgoing]:
        return [self._event(message, "forwarded", f"forwarded to {row.partner} ({row.country})")]

    def refused(self, uow: UnitOfWork, row: Forward, message: PartnerForward, reason: str) -> list[Outgoing]:
        detail = (f"forward {row.id} to {row.partner or row.country} refused after {row.attempts} attempt(s): "
                  f"{reason}; an operator fixes the partner's credentials and retries it (operations page)")
        uow.items.add_event(message.item_id, STAGE, "forward_refused", detail)
        uow.audit.append(STAGE, "forward_refused", row.id, reason)
        return [self._event(message, "forward_failed", detail)]

    def retrying(self, uow: UnitOfWork, row: Forward, message: PartnerForward, reason: str) -> list[Outgoing]:
        if row.attempts == 1:  # once on the timeline, not at every retry of a long outage
            uow.items.add_event(message.item_id, STAGE, "forward_retrying",
                                f"forward {row.id} to {row.partner} not delivered yet ({reason}): "
                                "retried with back-off until the partner takes it")
        return []

    @staticmethod
    def _event(fwd: PartnerForward, kind: str, detail: str) -> Outgoing:
        return Outgoing("notices.events", NoticeEvent(
            event_id=f"{fwd.forward_id}:{kind}", item_id=fwd.item_id, kind=kind,  # type: ignore[arg-type]
            forward_id=fwd.forward_id, detail=detail,
        ))


@dataclass
class UpdateDelivery(Delivery[PartnerStatusUpdate, PartnerUpdate]):
    """Status updates to the partner that forwarded a report to us (its ``status_endpoint``)."""

    gateway: StatusGateway | None = None

    topic: ClassVar[str] = "partners.status"

    def repo(self, uow: UnitOfWork) -> Any:
        return uow.partner_updates

    def key(self, message: PartnerStatusUpdate) -> str:
        return message.update_id

    def create(self, uow: UnitOfWork, message: PartnerStatusUpdate, at: datetime) -> PartnerUpdate:
        if uow.reports.get(message.report_id) is None:  # updates are about reports we received
            raise InvalidMessage("unknown_report",
                                 f"status update {message.update_id} names no known report {message.report_id!r}")
        return uow.partner_updates.add(new_update(message, at))

    def target(self, message: PartnerStatusUpdate) -> PartnerEntry | str:
        partner = self.partners.get(message.country)
        if partner is None:
            return f"no partner hotline is registered for {message.country}"
        if not partner.status_endpoint:
            return f"{partner.name} has no status_endpoint in the partners file"
        return partner

    def send(self, partner: PartnerEntry, message: PartnerStatusUpdate) -> object:
        assert self.gateway is not None
        return self.gateway.send_status(partner, message)

    def sent(self, uow: UnitOfWork, key: str, attempts: int, message: PartnerStatusUpdate,
             partner: PartnerEntry) -> list[Outgoing]:
        uow.audit.append(STAGE, "partner_update_sent", key, f"{partner.name}: {message.step} {message.action or ''}")
        return []

    def already_sent(self, uow: UnitOfWork, row: PartnerUpdate, message: PartnerStatusUpdate) -> list[Outgoing]:
        return []

    def refused(self, uow: UnitOfWork, row: PartnerUpdate, message: PartnerStatusUpdate,
                reason: str) -> list[Outgoing]:
        uow.audit.append(STAGE, "partner_update_refused", row.id, reason)
        return []


def new_update(message: PartnerStatusUpdate, at: datetime) -> PartnerUpdate:
    """The queue row of a status update (``action`` holds the step; the ICCAM code is in the payload)."""
    return PartnerUpdate(
        id=message.update_id, country=message.country.upper(), report_id=message.report_id, item_id=message.item_id,
        action=message.step, payload=message.model_dump(mode="json"), status="pending", attempts=0,
        created_at=at, next_attempt_at=at,
    )


@dataclass
class DeliveryDispatcher:
    """The periodic task beside the escalate stage: publishes the stored message of every due
    pending forward and status update (see the module docstring)."""

    clock: Clock = CURRENT
    batch: int = 100
    redispatch_seconds: float = 300.0
    interval_seconds: float = 1.0

    name: ClassVar[str] = "escalate-dispatcher"

    def tick(self, uow: UnitOfWork) -> list[Outgoing]:
        at = self.clock.now()
        stale = at - timedelta(seconds=self.redispatch_seconds)
        out: list[Outgoing] = []
        for fwd in uow.forwards.claim_due(at, self.batch, stale):
            if fwd.payload:
                out.append(Outgoing(ForwardDelivery.topic, PartnerForward.model_validate(fwd.payload)))
        for update in uow.partner_updates.claim_due(at, self.batch, stale):
            out.append(Outgoing(UpdateDelivery.topic, PartnerStatusUpdate.model_validate(update.payload)))
        return out

