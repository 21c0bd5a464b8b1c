"""Escalate: deliver forwards to partner hotlines abroad and status updates back to a
partner that forwarded a report to us, and turn police releases into takedowns
(``escalations.actions``: ``services.escalate.release``).

Police escalations need no delivery step: the police liaison consumes
``escalations.police`` directly (``hotline police feed``). Forwards and status updates are
durable queues (``services.escalate.forwards``): each message makes one attempt as a side
effect, a failure is recorded with its next attempt time and the stage goes on, so one
partner that is down never holds up the others; ``DeliveryDispatcher`` publishes due
attempts again. Every attempt carries the same ``Idempotency-Key`` (the forward or update
id), so a partner never handles a retried one twice.

The status updates themselves are decided from the pipeline's own messages
(``services.partners.updates``): an item accepted, a notice sent, content removed, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from hotline.kernel.clock import CURRENT, Clock
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.stage import Result
from schemas import Message
from schemas.notices import PartnerForward, PartnerStatusUpdate, PoliceAction
from services.escalate.forwards import Backoff, ForwardDelivery, UpdateDelivery
from services.escalate.partners import PartnerDirectory, PartnerGateway
from services.escalate.release import handle_action
from services.partners.updates import UPDATE_TOPICS, step_of, updates_for


def unread_when(status_updates: bool) -> frozenset[str]:
    """The inputs an escalate process does not read: the pipeline's events, when no partner
    has a status endpoint (``status_updates`` False); else none. Also what tools that watch its
    consumer group's lag must leave out (``benchmarks.crash_harness.group_lag``)."""
    return frozenset() if status_updates else UPDATE_TOPICS


@dataclass
class EscalateStage:
    partners: PartnerDirectory
    gateway: PartnerGateway
    backoff: Backoff = field(default_factory=Backoff)
    lease_seconds: float = 300.0
    clock: Clock = CURRENT
    home_country: str = "NL"  # police releases (services.escalate.release)
    hotline_name: str = "Hotline"

    name: ClassVar[str] = "escalate"
    inputs: ClassVar[tuple[str, ...]] = (
        "forwards.partner", "partners.status", "escalations.actions", "items.accepted", "items.classified",
        "notices.events",
    )

    def __post_init__(self) -> None:
        self.forwards = ForwardDelivery(self.partners, self.backoff, self.lease_seconds, self.clock, self.gateway)
        self.updates = UpdateDelivery(self.partners, self.backoff, self.lease_seconds, self.clock, self.gateway)

    def quiet_inputs(self) -> frozenset[str]:
        """The pipeline's events, read only for partners' status updates (``hotline.kernel.stage``,
        "Quiet inputs"): three per item, nearly all of which concern no partner."""
        return UPDATE_TOPICS

    def unread_inputs(self) -> frozenset[str]:
        """``unread_when`` this stage's partners file (``hotline.kernel.stage``, "Unread inputs")."""
        return unread_when(self.partners.sends_status_updates())

    def needs_nothing(self, topic: str, message: Message) -> bool:
        """True when ``handle`` would return nothing without a query (as ``updates_for`` decides
        from the message and the partners file alone)."""
        return topic in UPDATE_TOPICS and (not self.partners.sends_status_updates()
                                           or step_of(topic, message) is None)

    def handle(self, topic: str, message: Message, uow: UnitOfWork) -> Result:
        if topic == "forwards.partner":
            assert isinstance(message, PartnerForward)
            return self.forwards.handle(message, uow)
        if topic == "partners.status":
            assert isinstance(message, PartnerStatusUpdate)
            return self.updates.handle(message, uow)
        if topic == "escalations.actions":
            assert isinstance(message, PoliceAction)
            return handle_action(uow, message, home_country=self.home_country, partners=self.partners.names(),
                                 hotline_name=self.hotline_name)
        return updates_for(topic, message, uow, self.partners, self.clock.now())
