"""Driving stages by hand in unit tests: what a runtime does with one message, on any unit of
work (``MemoryUnitOfWork`` for stage tests, ``SqlUnitOfWork`` where the SQL adapter is the
point), plus the hand-written recording fakes the stages talk to.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Sequence
from email.message import EmailMessage
from typing import Any

from pydantic import BaseModel

from hotline.kernel.clock import CURRENT, Clock
from hotline.kernel.messages import Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.stage import Stage, complete, run_stage
from hotline.kernel.states import TRANSITIONS, ItemState
from schemas.facts import BankMatch, HostingFacts, ImageFacts
from schemas.items import ItemClassified
from schemas.notices import PartnerForward, PartnerStatusUpdate, TakedownNotice
from services.escalate.forwards import Backoff
from services.escalate.partners import DeliveryFailed, PartnerDirectory, PartnerEntry
from services.escalate.stage import EscalateStage
from services.notify.stage import NotifyStage

# --------------------------------------------------------------------------- one delivery


def deliver(stage: Stage, topic: str, raw_or_message: bytes | str | BaseModel, uow: UnitOfWork) -> list[Outgoing]:
    """One delivery of a message as a runtime does it: decode + handle (``run_stage``), run a
    side effect to its end (``complete``: commit, act, record), publish the outputs with the
    unit of work and commit; on any exception roll back and re-raise (a ``RetryLater`` from
    the stage surfaces as its error, which is what the runtime's failure policy sees)."""
    raw = raw_or_message.model_dump_json() if isinstance(raw_or_message, BaseModel) else raw_or_message
    try:
        out = complete(run_stage(stage, topic, raw, uow), uow)
        uow.enqueue(out)
        uow.commit()
        return out
    except BaseException:
        uow.rollback()
        raise


def of_topic(out: Sequence[Outgoing], topic: str) -> list[Any]:
    return [o.message for o in out if o.topic == topic]


def kinds(out: Sequence[Outgoing]) -> list[str]:
    """The kinds of the ``notices.events`` among ``out``."""
    return [m.kind for m in of_topic(out, "notices.events")]


# --------------------------------------------------------------------------- items


def path_to(state: str) -> list[ItemState]:
    """The shortest chain of allowed changes from ``received`` to ``state``."""
    target = ItemState(state)
    paths: dict[ItemState, list[ItemState]] = {ItemState.RECEIVED: []}
    queue = deque([ItemState.RECEIVED])
    while queue:
        current = queue.popleft()
        if current == target:
            return paths[current]
        for nxt in sorted(TRANSITIONS[current]):
            if nxt not in paths:
                paths[nxt] = [*paths[current], nxt]
                queue.append(nxt)
    raise ValueError(f"no item can reach {state}")


def make_item(uow: UnitOfWork, state: str, classification: ItemClassified | None = None) -> str:
    """A committed item in ``state``, reached by allowed changes; returns its id."""
    # A distinct URL per item: only one open item may exist per URL.
    item = uow.items.create(f"http://img.hoster-a.test/known.jpg?case={uuid.uuid4().hex}")
    for step in path_to(state):
        uow.items.set_state(item, step, "set up by the test", "test")
    if classification is not None:
        item.classification = classification.model_copy(update={"item_id": item.id}).model_dump(mode="json")
    uow.commit()
    return item.id


# --------------------------------------------------------------------------- notify

SENDER = "ntd@hotline.test"


def notify_stage(mailer: object) -> NotifyStage:
    return NotifyStage(mailer=mailer, sender=SENDER, hotline_name="Test hotline")  # type: ignore[arg-type]


KNOWN_IMAGE = ImageFacts(
    url="http://img.hoster-a.test/known.jpg", md5="0" * 31 + "1", sha1="0" * 39 + "2", sha256="0" * 63 + "3",
    pdq="f" * 64, match=BankMatch(entry_id=1, signal="sha256", distance=0, category="baseline", source="test"),
)


def notice_for(item_id: str, **changes: Any) -> TakedownNotice:
    """The notice classify writes for a known image at Hoster A (NL); ``changes`` override."""
    fields: dict[str, Any] = dict(
        notice_id=f"ntd-{item_id}", item_id=item_id, url="http://img.hoster-a.test/known.jpg",
        hoster="Hoster A B.V.", abuse_email="abuse@hoster-a.test", country="NL", images=[KNOWN_IMAGE],
        hosting=HostingFacts(host="img.hoster-a.test", ip="127.0.0.2", country="NL", asn=64501,
                             hoster="Hoster A B.V.", abuse="abuse@hoster-a.test", source="hosting_file"),
    )
    return TakedownNotice(**(fields | changes))


class ProcessKilled(BaseException):
    """Stands in for the process dying mid-send (not an Exception: nothing may catch it)."""


class DyingMailer:
    def send(self, message: EmailMessage) -> None:
        raise ProcessKilled


class RaisingMailer:
    """Raises ``error`` on every send and counts the attempts."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.attempts = 0

    def send(self, message: EmailMessage) -> None:
        self.attempts += 1
        raise self.error


# --------------------------------------------------------------------------- escalate

DE = PartnerEntry(country="DE", name="Partner hotline DE", endpoint="http://partner.invalid/api",
                  status_endpoint="http://partner.invalid/status")
FR = PartnerEntry(country="FR", name="Partner hotline FR", endpoint="http://partner-fr.invalid/api")


class FakeGateway:
    """Fails ``fail_times`` times (permanently or not), then accepts; records every call
    (forwards as (partner name, forward id), status updates as (partner name, update id))."""

    def __init__(self, fail_times: int = 0, permanent: bool = False, failing: set[str] | None = None) -> None:
        self.fail_times, self.permanent = fail_times, permanent
        self.failing = failing  # only these partner names fail (None: every partner)
        self.calls: list[tuple[str, str]] = []
        self.failures = 0

    def _call(self, partner: PartnerEntry, key: str) -> int:
        self.calls.append((partner.name, key))
        if (self.failing is None or partner.name in self.failing) and self.failures < self.fail_times:
            self.failures += 1
            raise DeliveryFailed(f"HTTP 503 on attempt {self.failures}" if not self.permanent else "HTTP 401",
                                 permanent=self.permanent)
        return 201

    def deliver(self, partner: PartnerEntry, forward: PartnerForward) -> int:
        return self._call(partner, forward.forward_id)

    def send_status(self, partner: PartnerEntry, update: PartnerStatusUpdate) -> int:
        return self._call(partner, update.update_id)


class DyingGateway:
    """The process dies while the partner is being called."""

    def __init__(self) -> None:
        self.calls = 0

    def deliver(self, partner: PartnerEntry, forward: PartnerForward) -> int:
        self.calls += 1
        raise ProcessKilled

    def send_status(self, partner: PartnerEntry, update: PartnerStatusUpdate) -> int:
        self.calls += 1
        raise ProcessKilled


def escalate_stage(gateway: object, retry_seconds: float = 2, max_seconds: float = 3600,
                   clock: Clock | None = None, partners: PartnerDirectory | None = None) -> EscalateStage:
    return EscalateStage(
        partners=partners or PartnerDirectory({"DE": DE, "FR": FR}), gateway=gateway,  # type: ignore[arg-type]
        backoff=Backoff(retry_seconds, max_seconds), lease_seconds=300, clock=clock or CURRENT,
    )


def forward_for(item_id: str, country: str = "DE", forward_id: str | None = None) -> PartnerForward:
    return PartnerForward(forward_id=forward_id or f"fwd-{item_id}", item_id=item_id,
                          url="http://cdn.hoster-de.test/k3.jpg", country=country, partner_name="Partner hotline DE")
