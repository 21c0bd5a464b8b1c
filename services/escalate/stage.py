"""Escalate: deliver forwards to partner hotlines abroad.

Police escalations need no delivery step: the police liaison consumes
``escalations.police`` directly (``hotline police feed``). Forwards are
retried a bounded number of times; one that still fails ends with the item
back in the analyst queue and the reason recorded, never silently dropped.
Partners receive an ``Idempotency-Key`` so a retried POST is not a second case.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from hotline.db.models import Forward
from hotline.stage import Outgoing
from hotline.store import Store, now
from schemas import Message
from schemas.notices import NoticeEvent, PartnerForward
from services.escalate.partners import DeliveryFailed, PartnerDirectory, PartnerGateway


@dataclass
class EscalateStage:
    partners: PartnerDirectory
    gateway: PartnerGateway
    max_attempts: int = 5
    retry_seconds: float = 2.0

    name: ClassVar[str] = "escalate"
    inputs: ClassVar[tuple[str, ...]] = ("forwards.partner",)

    def handle(self, topic: str, message: Message, store: Store) -> list[Outgoing]:
        assert isinstance(message, PartnerForward)
        fwd = store.get_forward(message.forward_id)
        if fwd is not None and fwd.status in ("sent", "failed"):
            return [self._event(message, "forwarded" if fwd.status == "sent" else "forward_failed", fwd.last_error or "")]
        partner = self.partners.by_country.get(message.country.upper())
        if fwd is None:
            fwd = Forward(
                id=message.forward_id,
                item_id=message.item_id,
                country=message.country.upper(),
                partner=partner.name if partner else "",
                status="pending",
            )
            store.add_forward(fwd)
        item = store.get_item(message.item_id)
        if partner is None:
            return self._give_up(store, fwd, message, item, f"no partner hotline is registered for {message.country}")

        error = ""
        while fwd.attempts < self.max_attempts:
            fwd.attempts += 1
            # Commit before the HTTP call: no database lock (SQLite's is per database) is held
            # while a slow partner answers, and the attempt is on record if the process dies.
            store.commit()
            try:
                self.gateway.deliver(partner, message)
            except DeliveryFailed as exc:
                error = exc.reason
                fwd.last_error = error
                store.commit()
                if exc.permanent:
                    break
                time.sleep(min(self.retry_seconds * 2 ** (fwd.attempts - 1), 60))
                continue
            fwd.status = "sent"
            fwd.sent_at = now()
            reason = f"forwarded to {partner.name} ({partner.country}), which handles takedown there"
            if item is not None:
                store.set_state(item, "forwarded", reason, self.name)
            store.audit(self.name, "forwarded", message.forward_id, partner.name)
            return [self._event(message, "forwarded", reason)]
        return self._give_up(store, fwd, message, item, f"forward to {partner.name} failed after {fwd.attempts} attempt(s): {error}")

    def _give_up(self, store: Store, fwd: Forward, message: PartnerForward, item: object, reason: str) -> list[Outgoing]:
        fwd.status = "failed"
        fwd.last_error = reason
        if item is not None:
            store.set_state(item, "awaiting_assessment", reason + "; an analyst decides what to do", self.name)  # type: ignore[arg-type]
        store.audit(self.name, "forward_failed", message.forward_id, reason)
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
