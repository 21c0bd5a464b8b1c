"""Followup: re-check URLs with a sent notice until the content is gone; remind the hoster
and climb the ladder while it stays up. Consumes ``rechecks.due`` (from the scheduler,
``services.followup.scheduler``); every outcome is an item event, a ``notices.events``
message and an audit row.

- ``check``: done once per (item, due time): a message for a due time that is no longer the
  follow-up's ``next_check_at`` (a duplicate, or one overtaken) is ignored. The fetch and
  hashing are a side effect outside any transaction; the result is recorded after it
  (``logic.after_check``). A confirmed removal moves the item to ``removed`` with the time
  to removal in its reason, the ``removed`` event at the time it was first seen gone.
- a batch of checks (``RecheckDue.checks``, from the scheduler's ``checks_per_message``):
  every check exactly as above, in one message: one transaction locks the follow-ups
  (``get_many_for_update``) and keeps those still due at the message's due time; the act
  step fetches and hashes them in parallel (``workers`` threads, at most ``per_hoster`` at
  a time per hoster); one transaction records every result, each under its row lock and
  only if its due time is still the follow-up's. A check whose act raised is left claimed
  (the scheduler redispatches it) and the rest of the batch is recorded.
- ``moved``: the matched content is served from another hoster now (``recheck``). This
  follow-up ends (no more checks, no more steps; not a removal) and the content goes where
  classify would have sent it (``classify.routing.decide_route`` on the new hoster's facts):
  a new notice ``ntd-<item>-moved-<n>`` to a home hoster's abuse contact, a partner forward
  ``fwd-<item>-moved-<n>`` abroad, else an analyst. When notify sends the new notice the
  follow-up row starts over for it (``hotline.storage.followups.reopen``).
- ``step``: a reminder or ladder step, reserved as ``sending`` before the SMTP conversation
  exactly like a notice (``services.notify.stage``): a step found still ``sending`` after
  a crash is never re-sent (``delivery_unknown``). Removed content gets no step.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from hashing.signals import SIGNAL_TYPES
from hotline.kernel.clock import CURRENT, Clock
from hotline.kernel.messages import InvalidMessage, Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.stage import Result, RetryLater, SideEffect, move_item
from hotline.kernel.states import ItemState, can_transition
from hotline.storage.followups import new_step
from hotline.storage.models import Followup
from schemas import Message
from schemas.facts import BankMatch, ImageFacts
from schemas.followups import RecheckDue
from schemas.items import ItemClassified
from schemas.notices import NoticeEvent, PartnerForward, TakedownNotice
from services.classify.fetcher import Fetcher
from services.classify.hosting import HostingResolver
from services.classify.routing import RouteDecision, decide_route
from services.followup.logic import (
    REMOVED_RESULTS,
    CheckResult,
    Policy,
    after_check,
    moved_forward_id,
    moved_notice_id,
    next_step,
    removal_reason,
    words,
)
from services.followup.mail import Contacts, evidence, render_step, step_id, step_message_id
from services.followup.recheck import HashFn, MovedTo, Observation, observe
from services.notify.mailer import DeliveryUnknown, Mailer, NotDelivered

TOPIC = "rechecks.due"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Due:
    """A check reserved in a batch: what the act step needs, read under the row lock."""

    item_id: str
    due: datetime
    url: str
    matched: list[dict[str, Any]]
    hoster: str


def _reraise(uow: UnitOfWork, exc: Exception) -> list[Outgoing]:
    raise exc


def decide_moved(moved: MovedTo, home_country: str, partner_countries: set[str]) -> RouteDecision:
    """Where content that moved goes: classify's routing table for known material on the new
    hoster (an NTD at home with an abuse contact, a forward to a partner abroad, else an analyst)."""
    return decide_route(online=True, offline_reason="", known=True, image_count=1, hosting=moved.hosting,
                        home_country=home_country, partner_countries=partner_countries)


@dataclass
class FollowupStage:
    fetcher: Fetcher
    hash_image: HashFn
    mailer: Mailer
    sender: str
    policy: Policy = field(default_factory=Policy)
    contacts: Contacts = field(default_factory=Contacts)
    clock: Clock = CURRENT
    hotline_name: str = "Hotline"
    max_images: int = 50
    pdq_radius: int = 31
    # Who hosts an image now, and where content found at another hoster goes (as classify):
    # without ``hosting`` a match anywhere counts as online (no "moved").
    hosting: HostingResolver | None = None
    home_country: str = "NL"
    partner_names: dict[str, str] = field(default_factory=dict)
    # A batch of checks: at most ``per_hoster`` fetches of one hoster at a time (0 = no cap),
    # at most ``workers`` at a time in all.
    per_hoster: int = 2
    workers: int = 8
    # One check (its page and all its images) within this many seconds, images this many at a
    # time, hashed one at a time per stage (as classify: ``observe``).
    item_deadline_seconds: float = 30.0
    image_concurrency: int = 4
    _hash_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False, compare=False)
    _pool_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    name: ClassVar[str] = "followup"
    inputs: ClassVar[tuple[str, ...]] = (TOPIC,)

    def handle(self, topic: str, message: Message, uow: UnitOfWork) -> Result:
        assert isinstance(message, RecheckDue)
        if message.action == "check" and message.checks:
            return self._check_batch(uow, message)
        f = uow.followups.get_for_update(message.item_id)
        if f is None:
            raise InvalidMessage("unknown_followup", f"item {message.item_id} has no follow-up")
        if message.action == "check":
            return self._check(message, f)
        return self._step(uow, message, f)

    # ------------------------------------------------------------------ re-checks

    def _check(self, message: RecheckDue, f: Followup) -> Result:
        if f.status != "open" or f.next_check_at is None or message.due_at != f.next_check_at:
            return []  # done already (a duplicate), or overtaken: nothing to do
        item_id, url, matched, due, hoster = f.item_id, f.url, list(f.matched), f.next_check_at, f.hoster
        hoster_of = self.hosting.facts if self.hosting is not None else None
        return SideEffect(
            act=lambda: observe(self.fetcher, self.hash_image, url, matched,
                                max_images=self.max_images, pdq_radius=self.pdq_radius,
                                hoster=hoster, hoster_of=hoster_of, **self._bounds()),
            done=lambda u, obs: self._record(u, item_id, due, obs),
            failed=_reraise,
        )

    # ------------------------------------------------------------------ a batch of re-checks

    def _check_batch(self, uow: UnitOfWork, message: RecheckDue) -> Result:
        checks = message.due_checks()
        rows = uow.followups.get_many_for_update([c.item_id for c in checks])
        due: list[_Due] = []
        seen: set[str] = set()
        for c in checks:
            f = rows.get(c.item_id)
            if f is None or c.item_id in seen:
                continue  # gone meanwhile (a batch never fails for one unknown item), or listed twice
            if f.status != "open" or f.next_check_at is None or c.due_at != f.next_check_at:
                continue  # done already (a duplicate), or overtaken
            seen.add(c.item_id)
            due.append(_Due(f.item_id, f.next_check_at, f.url, list(f.matched), f.hoster))
        if not due:
            return []
        return SideEffect(
            act=lambda: self._observe_all(due),
            done=lambda u, results: self._record_all(u, due, results),
            failed=_reraise,
        )

    def _observe_one(self, d: _Due) -> Observation:
        hoster_of = self.hosting.facts if self.hosting is not None else None
        return observe(self.fetcher, self.hash_image, d.url, d.matched, max_images=self.max_images,
                       pdq_radius=self.pdq_radius, hoster=d.hoster, hoster_of=hoster_of, **self._bounds())

    def _bounds(self) -> dict[str, Any]:
        """The time and concurrency bounds of one re-check (``observe``)."""
        return {"deadline_seconds": self.item_deadline_seconds, "image_concurrency": self.image_concurrency,
                "hash_lock": self._hash_lock}

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max(1, self.workers), thread_name_prefix="followup-fetch")
            return self._pool

    def _observe_all(self, due: list[_Due]) -> list[Observation | None]:
        """Fetch and hash every check of a batch: one lane per allowed fetch per hoster (a lane
        does its checks one after the other), the lanes on the pool. An error in one check is
        its own (``None``: left for redispatch); the others are recorded."""
        results: list[Observation | None] = [None] * len(due)
        by_hoster: dict[str, list[int]] = defaultdict(list)
        for n, d in enumerate(due):
            by_hoster[d.hoster].append(n)
        lanes: list[list[int]] = []
        for indices in by_hoster.values():
            width = len(indices) if self.per_hoster <= 0 else min(self.per_hoster, len(indices))
            lanes += [indices[k::width] for k in range(width)]

        def run(lane: list[int]) -> None:
            for n in lane:
                try:
                    results[n] = self._observe_one(due[n])
                except Exception:  # noqa: BLE001 - this check only; redispatched by the scheduler
                    log.exception("re-check of %s failed; left for redispatch", due[n].item_id)

        if len(lanes) == 1 or self.workers <= 1:
            for lane in lanes:
                run(lane)
        else:
            for future in [self._executor().submit(run, lane) for lane in lanes]:
                future.result()
        return results

    def _record_all(self, uow: UnitOfWork, due: list[_Due], results: list[Observation | None]) -> list[Outgoing]:
        rows = uow.followups.get_many_for_update([d.item_id for d, obs in zip(due, results, strict=True)
                                                  if obs is not None])
        out: list[Outgoing] = []
        for d, obs in zip(due, results, strict=True):
            f = rows.get(d.item_id)
            if obs is not None and f is not None:
                out += self._record_row(uow, f, d.due, obs)
        return out

    # ------------------------------------------------------------------ recording one re-check

    def _record(self, uow: UnitOfWork, item_id: str, due: datetime, obs: Observation) -> list[Outgoing]:
        # Locked: two deliveries of one check (a partition moved to another process mid-event)
        # may both fetch, but the second to record waits for the first, sees the due time
        # recorded and records nothing. Unlocked, both read the row before either committed:
        # the check counted once but its result, events and any step decided twice.
        f = uow.followups.get_for_update(item_id)
        if f is None:
            return []
        return self._record_row(uow, f, due, obs)

    def _record_row(self, uow: UnitOfWork, f: Followup, due: datetime, obs: Observation) -> list[Outgoing]:
        """Record one check on its locked row, unless its due time was recorded meanwhile."""
        if f.status != "open" or f.next_check_at != due:
            return []  # recorded by another delivery of the same message meanwhile
        item_id = f.item_id
        at = self.clock.now()
        result = obs.result
        outcome = after_check(
            item_id=item_id, checks=f.checks, misses=f.misses, first_gone_at=f.first_gone_at,
            checked_at=at, result=result, policy=self.policy,
        )
        changed = f.last_result != result
        f.checks += 1
        f.last_result, f.last_checked_at = str(result), at
        f.misses, f.first_gone_at = outcome.misses, outcome.first_gone_at
        f.next_check_at, f.dispatched_at = outcome.next_check_at, None
        detail = f"re-check {f.checks}: {result}: {obs.detail}"
        if obs.seen:
            detail += f" (sha256 seen: {', '.join(s[:16] for s in obs.seen[:3])})"
        out = [self._event(f, "rechecked", detail, at, f"{f.notice_id}:rechecked:{f.checks}")]
        if changed or result in REMOVED_RESULTS:
            uow.items.add_event(item_id, self.name, "rechecked", detail, at)
        if result is CheckResult.MOVED and obs.moved_to is not None:
            out += self._moved(uow, f, obs.moved_to, at)
        elif outcome.removed_at is not None:
            out += self._removed(uow, f, outcome.removed_at, obs)
        elif result is CheckResult.ONLINE and f.step_pending is None:
            out += self._decide_step(f, at)
        return out

    def _removed(self, uow: UnitOfWork, f: Followup, removed_at: datetime, obs: Observation) -> list[Outgoing]:
        reason = removal_reason(removed_at, f.first_notice_at, f.first_report_at, obs.detail)
        f.status, f.removed_at, f.removal_reason = "removed", removed_at, reason
        f.step_pending = f.step_dispatched_at = None
        item = uow.items.get(f.item_id)
        if item is not None:
            if can_transition(item.state, ItemState.REMOVED):
                uow.items.set_state(item, ItemState.REMOVED, reason, self.name, at=removed_at)
            else:
                uow.items.add_event(item.id, self.name, ItemState.REMOVED, f"{reason} (the item stays {item.state})",
                                    removed_at)
        uow.audit.append(self.name, "removed", f.item_id, reason)
        return [self._event(f, "removed", reason, removed_at, f"{f.notice_id}:removed")]

    def _moved(self, uow: UnitOfWork, f: Followup, moved: MovedTo, at: datetime) -> list[Outgoing]:
        """The old hoster's follow-up ends (no reminders: the content is not there); the content
        goes to the new hoster, to a partner abroad, or to an analyst."""
        decision = decide_moved(moved, self.home_country, set(self.partner_names))
        f.status, f.step_pending, f.step_dispatched_at = "moved", None, None
        image = self._image(uow, f, moved)
        what = {"ntd": "a new notice to", "forward": "a partner forward for"}.get(decision.route, "")
        detail = f"moved to {moved.hoster}: the matched image is now served from {moved.image_url}; "
        detail += f"{what} {moved.hoster}" if what else "an analyst decides"
        detail += f" ({decision.reason})"
        f.removal_reason = detail  # why this follow-up ended; removed_at stays null (not a removal)
        uow.items.add_event(f.item_id, self.name, "moved", detail, at)
        uow.audit.append(self.name, "moved", f.item_id, detail)
        out = [self._event(f, "rechecked", detail, at, f"{f.notice_id}:moved")]
        h = moved.hosting
        if decision.route == "ntd":
            out.append(Outgoing("notices.ntd", TakedownNotice(
                notice_id=moved_notice_id(f.item_id, f.notice_id), item_id=f.item_id, url=moved.page_url,
                hoster=moved.hoster, abuse_email=h.abuse or "", country=h.country, images=[image], hosting=h,
                created_at=at,
            )))
        elif decision.route == "forward" and h.country:
            out.append(Outgoing("forwards.partner", PartnerForward(
                forward_id=moved_forward_id(f.item_id, f.notice_id), item_id=f.item_id, url=moved.page_url,
                country=h.country, partner_name=self.partner_names.get(h.country, ""), images=[image], hosting=h,
                from_hotline=self.hotline_name, created_at=at,
            )))
            move_item(uow, f.item_id, ItemState.FORWARD_QUEUED, detail, self.name)
        else:
            move_item(uow, f.item_id, ItemState.AWAITING_ASSESSMENT, detail, self.name)
        return out

    def _image(self, uow: UnitOfWork, f: Followup, moved: MovedTo) -> ImageFacts:
        """The image as the new notice names it: its new URL and hashes, with the bank match of
        the classified image it matches (a notice lists matched images only)."""
        match: BankMatch | None = None
        item = uow.items.get(f.item_id)
        if item is not None and item.classification:
            known = [i for i in ItemClassified.model_validate(item.classification).images if i.match is not None]
            pdq = SIGNAL_TYPES["pdq"]
            h = moved.hashes
            for i in known:
                if (i.sha256 and i.sha256 == h.get("sha256")) or (i.md5 and i.md5 == h.get("md5")) or (
                    i.pdq and h.get("pdq") and pdq.distance(i.pdq, h["pdq"]) <= self.pdq_radius
                ):
                    match = i.match
                    break
            if match is None and known:
                match = known[0].match
        return ImageFacts(url=moved.image_url, **moved.hashes, match=match)

    def _decide_step(self, f: Followup, at: datetime) -> list[Outgoing]:
        """Mark the step that is due as pending; the scheduler publishes its message at its next
        tick, through the transactional outbox. Not as an output of this stage: on Kafka a
        stage's outputs are produced after its commit, and a crash in between redelivers the
        check, which is then a duplicate that produces nothing, so the step would wait for the
        scheduler's redispatch (``redispatch_seconds``, 15 min by default) instead of going out
        when due."""
        nxt = next_step(steps_taken=f.step, first_notice_at=f.first_notice_at, last_step_at=f.last_step_at,
                        at=at, policy=self.policy)
        if nxt is None:
            return []
        f.step_pending, f.step_dispatched_at = nxt[0], None
        return []

    # ------------------------------------------------------------------ reminders and the ladder

    def _step(self, uow: UnitOfWork, message: RecheckDue, f: Followup) -> Result:
        position = message.position
        if f.status != "open":
            f.step_pending = f.step_dispatched_at = None
            return []  # removed content gets nothing more
        if position is None or f.step_pending != position:
            return []  # done already, or never decided
        kinds = self.policy.steps
        if not 1 <= position <= len(kinds):
            f.step_pending = f.step_dispatched_at = None
            raise InvalidMessage("unknown_step", f"step {position} is not on the ladder {kinds}")
        kind = kinds[position - 1]
        at = self.clock.now()
        sid = step_id(f.item_id, position, f.notice_id)
        step = uow.followups.get_step(sid)
        if step is not None:
            if step.status == "sending":
                return self._unknown(uow, f, position, kind, "the process stopped while sending it")
            if step.status != "failed":  # sent, refused, unknown, skipped: finished
                self._advance(f, position, at, went_out=step.status != "skipped")
                return []
            step.status = "sending"
        else:
            address, why = self.contacts.address(kind, f)
            if address is None:
                return self._skip(uow, f, position, kind, why, at)
            domain = self.sender.rsplit("@", 1)[-1]
            step = uow.followups.add_step(new_step(
                sid, f.item_id, position, kind, address, step_message_id(f.item_id, position, domain, f.notice_id), "sending"))
        package = evidence(f, uow.items.events(f.item_id), uow.followups.steps(f.item_id), self.policy, at)
        email = render_step(kind, position, step.recipient or "", f, package, self.sender, self.hotline_name, at)
        item_id = f.item_id
        return SideEffect(
            act=lambda: self.mailer.send(email),
            done=lambda u, _: self._step_sent(u, item_id, position, kind),
            failed=lambda u, exc: self._step_failed(u, item_id, position, kind, exc),
        )

    def _advance(self, f: Followup, position: int, at: datetime, went_out: bool) -> None:
        if f.step < position:
            f.step = position
            if went_out:
                f.last_step_at = at
        if f.step_pending == position:
            f.step_pending = f.step_dispatched_at = None

    @staticmethod
    def _event_kind(kind: str) -> str:
        return "reminder" if kind == "reminder" else "overdue"

    def _skip(self, uow: UnitOfWork, f: Followup, position: int, kind: str, why: str, at: datetime) -> list[Outgoing]:
        detail = f"step {position} ({kind}) skipped: {why}"
        uow.followups.add_step(new_step(step_id(f.item_id, position, f.notice_id), f.item_id, position, kind, None, None,
                                        "skipped", why))
        self._advance(f, position, at, went_out=False)
        uow.items.add_event(f.item_id, self.name, self._event_kind(kind), detail, at)
        uow.audit.append(self.name, "followup_step_skipped", step_id(f.item_id, position, f.notice_id), why)
        out = [self._event(f, self._event_kind(kind), detail, at, f"{f.notice_id}:step:{position}")]
        return out + self._decide_step(f, at)  # the next rung follows at once

    def _step_sent(self, uow: UnitOfWork, item_id: str, position: int, kind: str) -> list[Outgoing]:
        f = uow.followups.get_for_update(item_id)
        assert f is not None
        step = uow.followups.get_step(step_id(item_id, position, f.notice_id))
        assert step is not None
        at = self.clock.now()
        step.status, step.sent_at = "sent", at
        self._advance(f, position, at, went_out=True)
        what = "reminder" if kind == "reminder" else f"escalated to the {kind}"
        detail = (f"{what} sent to {step.recipient}: still online {self._online_for(f, at)} after the first "
                  "notice, evidence attached")
        uow.items.add_event(item_id, self.name, self._event_kind(kind), detail, at)
        uow.audit.append(self.name, f"followup_{kind}_sent", step.id, step.recipient or "")
        return [self._event(f, self._event_kind(kind), detail, at, f"{f.notice_id}:step:{position}")]

    def _step_failed(
        self, uow: UnitOfWork, item_id: str, position: int, kind: str, exc: Exception
    ) -> list[Outgoing] | RetryLater:
        if not isinstance(exc, NotDelivered):
            why = "no final answer from the mail server" if isinstance(exc, DeliveryUnknown) else "the mailer failed"
            return self._unknown(uow, None, position, kind, f"{why}: {exc}", item_id)
        f = uow.followups.get(item_id)
        assert f is not None
        step = uow.followups.get_step(step_id(item_id, position, f.notice_id))
        assert step is not None
        if not exc.permanent:
            step.status = "failed"
            return RetryLater(exc)
        at = self.clock.now()
        step.status, step.reason = "refused", str(exc)
        self._advance(f, position, at, went_out=True)
        detail = f"step {position} ({kind}) to {step.recipient} refused by the mail server for good: {exc}"
        uow.items.add_event(item_id, self.name, self._event_kind(kind), detail, at)
        uow.audit.append(self.name, "followup_step_refused", step.id, str(exc))
        return [self._event(f, "bounced", detail, at, f"{f.notice_id}:step:{position}:bounced")]

    def _unknown(
        self, uow: UnitOfWork, f: Followup | None, position: int, kind: str, why: str, item_id: str | None = None,
    ) -> list[Outgoing]:
        f = f or uow.followups.get(item_id or "")
        assert f is not None
        step = uow.followups.get_step(step_id(f.item_id, position, f.notice_id))
        assert step is not None
        at = self.clock.now()
        step.status, step.reason = "delivery_unknown", why
        self._advance(f, position, at, went_out=True)
        detail = (f"step {position} ({kind}) to {step.recipient}: delivery unknown ({why}); not re-sent, an operator "
                  f"checks the SMTP log for {step.message_id}")
        uow.items.add_event(f.item_id, self.name, self._event_kind(kind), detail, at)
        uow.audit.append(self.name, "followup_step_delivery_unknown", step.id, step.message_id or "")
        return [self._event(f, "delivery_unknown", detail, at, f"{f.notice_id}:step:{position}:unknown")]

    @staticmethod
    def _online_for(f: Followup, at: datetime) -> str:
        return words(at - f.first_notice_at)

    def _event(self, f: Followup, kind: str, detail: str, at: datetime, event_id: str) -> Outgoing:
        return Outgoing(
            "notices.events",
            NoticeEvent(event_id=event_id, item_id=f.item_id, kind=kind,  # type: ignore[arg-type]
                        notice_id=f.notice_id, detail=detail, at=at),
        )
