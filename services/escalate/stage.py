"""Escalate: deliver forwards to partner hotlines abroad, and turn police releases into
takedowns (``escalations.actions``: ``services.escalate.release``).

Police escalations need no delivery step: the police liaison consumes
``escalations.police`` directly (``hotline police feed``). Each delivery attempt is a
side effect (``hotline.kernel.stage.SideEffect``): the attempt is counted and committed
before the POST, so no database lock is held while a slow partner answers and a crash
cannot hide an attempt. A failed attempt asks the runtime to retry the message after
``retry_seconds`` (doubling); after ``max_attempts``, or at once when the partner refuses
for good, the item goes back to the analyst queue with the reason, never silently
dropped. Every attempt carries the same ``Idempotency-Key`` (the forward id), so a
partner never handles a retried forward twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hotline.kernel.clock import now
from hotline.kernel.messages import Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.stage import Result, RetryLater, SideEffect, move_item
from hotline.kernel.states import ItemState
from hotline.storage.models import Forward
from schemas import Message
from schemas.notices import NoticeEvent, PartnerForward, PoliceAction
from services.escalate.partners import (
    DeliveryFailed,
    PartnerDirectory,
    PartnerEntry,
    PartnerGateway,
)
from services.escalate.release import handle_action


@dataclass
class EscalateStage:
    partners: PartnerDirectory
    gateway: PartnerGateway
    max_attempts: int = 5
    retry_seconds: float = 2.0
    home_country: str = "NL"  # police releases (services.escalate.release)
    hotline_name: str = "Hotline"

    name: ClassVar[str] = "escalate"
    inputs: ClassVar[tuple[str, ...]] = ("forwards.partner", "escalations.actions")

    def handle(self, topic: str, message: Message, uow: UnitOfWork) -> Result:
        if topic == "escalations.actions":
            assert isinstance(message, PoliceAction)
            return handle_action(uow, message, home_country=self.home_country, partners=self.partners.names(),
                                 hotline_name=self.hotline_name)
        assert isinstance(message, PartnerForward)
        fwd = uow.forwards.get(message.forward_id)
        if fwd is not None and fwd.status in ("sent", "failed"):
            return [self._event(message, "forwarded" if fwd.status == "sent" else "forward_failed", fwd.last_error or "")]
        partner = self.partners.by_country.get(message.country.upper())
        if fwd is None:
            fwd = uow.forwards.open(message.forward_id, message.item_id, message.country.upper(), partner.name if partner else "")
        if partner is None:
            return self._give_up(uow, fwd, message, f"no partner hotline is registered for {message.country}")
        if fwd.attempts >= self.max_attempts:
            # Redelivered after the last attempt failed and before its outcome was recorded.
            return self._give_up(uow, fwd, message, f"forward to {partner.name} failed after {fwd.attempts} attempt(s): {fwd.last_error or 'unknown error'}")
        fwd.attempts += 1
        return SideEffect(
            act=lambda: self.gateway.deliver(partner, message),
            done=lambda u, _: self._delivered(u, message, partner),
            failed=lambda u, exc: self._failed(u, message, partner, exc),
        )

    def _delivered(self, uow: UnitOfWork, message: PartnerForward, partner: PartnerEntry) -> list[Outgoing]:
        fwd = uow.forwards.get(message.forward_id)
        assert fwd is not None
        fwd.status = "sent"
        fwd.sent_at = now()
        reason = f"forwarded to {partner.name} ({partner.country}), which handles takedown there"
        move_item(uow, message.item_id, ItemState.FORWARDED, reason, self.name)
        uow.audit.append(self.name, "forwarded", message.forward_id, partner.name)
        return [self._event(message, "forwarded", reason)]

    def _failed(
        self, uow: UnitOfWork, message: PartnerForward, partner: PartnerEntry, exc: Exception
    ) -> list[Outgoing] | RetryLater:
        if not isinstance(exc, DeliveryFailed):
            raise exc  # a bug in the gateway: the failure policy decides
        fwd = uow.forwards.get(message.forward_id)
        assert fwd is not None
        fwd.last_error = exc.reason
        if exc.permanent or fwd.attempts >= self.max_attempts:
            return self._give_up(
                uow, fwd, message, f"forward to {partner.name} failed after {fwd.attempts} attempt(s): {exc.reason}"
            )
        return RetryLater(exc, after_seconds=min(self.retry_seconds * 2 ** (fwd.attempts - 1), 60))

    def _give_up(self, uow: UnitOfWork, fwd: Forward, message: PartnerForward, reason: str) -> list[Outgoing]:
        fwd.status = "failed"
        fwd.last_error = reason
        move_item(uow, message.item_id, ItemState.AWAITING_ASSESSMENT, reason + "; an analyst decides what to do", self.name)
        uow.audit.append(self.name, "forward_failed", message.forward_id, reason)
        return [self._event(message, "forward_failed", reason)]

    def _event(self, fwd: PartnerForward, kind: str, detail: str) -> Outgoing:
        return Outgoing(
            "notices.events",
            NoticeEvent(
                event_id=f"{fwd.forward_id}:{kind}",
                item_id=fwd.item_id,
                kind=kind,  # type: ignore[arg-type]
                forward_id=fwd.forward_id,
                detail=detail,
            ),
        )
