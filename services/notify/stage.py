"""Notify: send Notice-and-Takedown e-mails, at most once each.

Reserve → act → record (``hotline.kernel.stage.SideEffect``): the notice is recorded as
``sending`` and committed *before* the SMTP conversation, and marked after it:

- ``sent`` when the server accepted the message;
- ``failed`` when the server did not take it for now (``NotDelivered``: unreachable,
  a 4xx, cut off before the end of the data): nothing was delivered, so it is retried;
- ``refused`` when the server refused it for good (a 5xx such as 550 "no such mailbox"):
  resending cannot help, so the item goes to an analyst with the server's answer;
- ``delivery_unknown`` when the whole message was handed over but the server's final
  answer never came (``DeliveryUnknown``, or any error a mailer should not raise: at most
  once beats at least once for a notice), or when a redelivered notice is found still
  ``sending`` (the process died mid-send): the hoster may already have it, so it is never
  sent again; the item goes to ``notice_unconfirmed`` for an operator to check the SMTP
  log by the notice's Message-ID.

An operator resolves ``delivery_unknown`` and ``refused`` notices (``services/operations``):
a resend sets the notice back to ``failed`` and publishes it again; a notice sent to another
address instead is ``superseded`` and never sent from here again.

**Grouping** (``group_seconds``, ``HOTLINE_NOTICE_GROUP_SECONDS``; 0, the default, turns it
off and every notice goes out on its own at once). One e-mail is the unit of the at-most-once
rule: every notice in it is reserved ``sending`` in *one* transaction, they share the
e-mail's Message-ID (``notice.group_message_id``), and the outcome is recorded on all of them
together, so a group behaves exactly like a single notice:

- a notice to an abuse address with no ``sent`` notice within the last ``group_seconds`` goes
  out at once (the first notice to a contact is never delayed), together with any notices
  still held for that address;
- otherwise it is *held*: status ``grouped`` (the item stays ``notice_queued``), its
  ``TakedownNotice`` kept in ``notices.payload`` (its X-ARF report validated now, so an
  invalid one is parked now and never blocks a group), due at ``held_until`` = that last
  e-mail + ``group_seconds``;
- a held notice is flushed by the next notice to the address after the window, or by the
  periodic ``NoticeGrouper`` (``services.notify.grouper``), which re-publishes the oldest
  due held notice of each address on ``notices.ntd``: whatever ``grouped`` notices that
  address has then go out as one e-mail with one X-ARF report per URL;
- a crash between reserve and record leaves the whole group ``sending``: on redelivery every
  notice of that Message-ID still ``sending`` becomes ``delivery_unknown``, none is re-sent;
  a refusal or failure is recorded on all of them, and a retry of a ``failed`` notice sends
  the ``failed`` notices of its Message-ID again as the same one e-mail.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar

from hotline.kernel.clock import now
from hotline.kernel.messages import InvalidMessage, Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.stage import Result, RetryLater, SideEffect, move_item
from hotline.kernel.states import ItemState
from hotline.storage.models import Item, Notice
from schemas import Message
from schemas.notices import NoticeEvent, TakedownNotice
from services.followup.opening import open_followup
from services.notify.mailer import DeliveryUnknown, Mailer, NotDelivered
from services.notify.notice import group_message_id, render_group
from services.notify.xarf_report import XarfReportInvalid, build_report

UNKNOWN_AFTER_RESTART = "delivery outcome unknown after a restart"


@dataclass
class NotifyStage:
    mailer: Mailer
    sender: str
    hotline_name: str = "Hotline"
    notice_language: str = "auto"  # auto | nl | en (services.notify.notice.notice_language)

    group_seconds: float = 0.0  # grouping window per abuse address; 0 = every notice at once
    # E-mails in flight at once on Kafka (HOTLINE_NOTIFY_IN_FLIGHT; hotline.runtime.kafka); 1 = one.
    in_flight: int = 8

    name: ClassVar[str] = "notify"
    inputs: ClassVar[tuple[str, ...]] = ("notices.ntd",)
    # Bookkeeping (a redelivered sent notice, a held one) batches; every e-mail still gets its
    # own reservation commit before it goes (hotline.kernel.stage, "Batches").
    batchable: ClassVar[bool] = True
    # On Kafka, several e-mails at once (hotline.kernel.stage "Overlapping"), those of one item
    # (``in_order_by``) one after another: most of a notice's time is the SMTP conversation.
    # Safe: the mailer takes several senders at once, an e-mail's notices are reserved in their
    # own transaction, and recording an outcome first locks its items (``_lock_items``), so two
    # notices of one item (per-image hosters) record one after the other.
    overlapping: ClassVar[bool] = True

    def in_order_by(self, topic: str, message: Message) -> str:
        """What must go one after another while e-mails overlap (``hotline.kernel.stage``
        "Overlapping"): with grouping on, every notice to one abuse address (its window decides
        which one goes and which wait); without it, only one item's notices, which record on the
        same item. A hoster's notices need no order among themselves, so a burst to one hoster
        still has several e-mails in flight."""
        assert isinstance(message, TakedownNotice)
        return f"to:{message.abuse_email.lower()}" if self.group_seconds > 0 else f"item:{message.item_id}"

    def handle(self, topic: str, message: Message, uow: UnitOfWork) -> Result:
        """A notice that can never be sent (no item of that id; an X-ARF report that does not
        validate) is a rejection with the reason, not an error retried until parked."""
        assert isinstance(message, TakedownNotice)
        try:
            return self._handle(message, uow)
        except XarfReportInvalid as exc:
            raise InvalidMessage("invalid_notice", str(exc)) from exc

    def _handle(self, message: TakedownNotice, uow: UnitOfWork) -> Result:
        # The notice, the notices held for its address (a new notice goes out with those,
        # ``_send``) and whether its item is stored in one look-up: asked apart, a statement each.
        notice, held, item_known = uow.notices.look_up(message.notice_id, message.abuse_email, message.item_id)
        if notice is None and not item_known:
            raise InvalidMessage("unknown_item", f"notice {message.notice_id} names no known item {message.item_id!r}")
        if notice is not None:
            if notice.status == "sent":
                return [self._event(message, "sent", f"notice sent to {notice.abuse_email}")]
            if notice.status == "sending":
                return self._unknown(uow, self._members(uow, notice, message, "sending"), UNKNOWN_AFTER_RESTART,
                                     f"the process stopped while sending {notice.message_id}")
            if notice.status == "delivery_unknown":
                return [self._event(message, "delivery_unknown", UNKNOWN_AFTER_RESTART)]
            if notice.status == "refused":
                return [self._event(message, "bounced", f"the mail server refused the notice to {notice.abuse_email}")]
            if notice.status == "superseded":
                # An operator sent it to another address instead (services/operations): the
                # message still on its way here (a retry, a redelivery) must not send it.
                return []
            if notice.status == "grouped":
                # Held for a group (a redelivery, or the grouper's nudge): out once its window closed.
                if self._window_end(uow, message.abuse_email) is not None:
                    return []
                return self._send(uow, [], message.abuse_email)
            # status "failed": the last attempt did not reach the server (or an operator found
            # it was not delivered and asked for it again); try again, with the rest of its e-mail.
            members = self._members(uow, notice, message, "failed")
            for n, _ in members:
                n.status = "sending"
            return self._side_effect(members, notice.message_id)
        if self.group_seconds > 0:
            held_until = self._window_end(uow, message.abuse_email)
            if held_until is not None:
                return self._hold(uow, message, held_until)
        return self._send(uow, [message], message.abuse_email, held)

    # ------------------------------------------------------------------ grouping

    def _window_end(self, uow: UnitOfWork, abuse_email: str) -> datetime | None:
        """When the grouping window of ``abuse_email`` closes, if it is open now."""
        if self.group_seconds <= 0:
            return None
        last = uow.notices.last_sent_to(abuse_email)
        if last is None:
            return None
        end = last + timedelta(seconds=self.group_seconds)
        return end if now() < end else None

    def _hold(self, uow: UnitOfWork, message: TakedownNotice, held_until: datetime) -> list[Outgoing]:
        build_report(message, self.sender, self.hotline_name)  # an invalid report is parked now, not in a group
        notice = uow.notices.reserve(message.notice_id, message.item_id, message.hoster, message.abuse_email,
                                     self._message_id([message]))
        notice.status = "grouped"
        notice.held_until = held_until
        notice.payload = message.model_dump(mode="json")
        uow.items.add_event(
            message.item_id, self.name, "notice_grouped",
            f"held to go out with other notices to {message.abuse_email} in one e-mail at {held_until.isoformat()}",
        )
        uow.audit.append(self.name, "notice_grouped", message.notice_id, message.abuse_email)
        return []

    def _send(
        self, uow: UnitOfWork, new: list[TakedownNotice], abuse_email: str, held: list[Notice] | None = None,
    ) -> Result:
        """Reserve ``new`` (not yet recorded) and every notice held for ``abuse_email`` (``held``,
        when the caller has just looked them up) as one e-mail, all ``sending`` in this one
        transaction."""
        if held is None:
            held = list(uow.notices.held_for(abuse_email))  # none unless grouping is (or was) on
        members: list[tuple[Notice, TakedownNotice]] = [(n, TakedownNotice.model_validate(n.payload)) for n in held]
        if not members and not new:
            return []
        mid = self._message_id([m for _, m in members] + new)
        for m in new:
            members.append((uow.notices.reserve(m.notice_id, m.item_id, m.hoster, m.abuse_email, mid), m))
        for n, m in members:
            n.status, n.message_id, n.held_until = "sending", mid, None
            if len(members) > 1:  # a redelivery or retry of any of them finds the others by Message-ID
                n.payload = m.model_dump(mode="json")
        return self._side_effect(members, mid)

    def _members(
        self, uow: UnitOfWork, notice: Notice, message: TakedownNotice, status: str
    ) -> list[tuple[Notice, TakedownNotice]]:
        """The notices of ``notice``'s e-mail in ``status`` (``notice`` first), with their messages."""
        members = [(notice, message)]
        for other in uow.notices.in_group(notice.message_id):
            if other.id != notice.id and other.status == status and other.payload is not None:
                members.append((other, TakedownNotice.model_validate(other.payload)))
        return members

    def _message_id(self, messages: list[TakedownNotice]) -> str:
        return group_message_id(messages, self.sender.rsplit("@", 1)[-1])

    # ------------------------------------------------------------------ one e-mail

    def _side_effect(self, members: list[tuple[Notice, TakedownNotice]], mid: str) -> SideEffect:
        messages = [m for _, m in members]
        email = render_group(messages, self.sender, self.hotline_name, self.notice_language, mid)
        return SideEffect(
            act=lambda: self.mailer.send(email),
            done=lambda u, _: self._all_sent(u, messages),
            failed=lambda u, exc: self._failed(u, messages, exc),
        )

    def _all_sent(self, uow: UnitOfWork, messages: list[TakedownNotice]) -> list[Outgoing]:
        items = _lock_items(uow, messages)  # held: the steps below find them without a query
        out = [o for m in messages for o in self._sent(uow, m)]
        del items
        return out

    def _sent(self, uow: UnitOfWork, message: TakedownNotice) -> list[Outgoing]:
        # Held here so the follow-up and the state change below share one load of the item: the
        # session's identity map keeps unmodified rows only while something refers to them.
        item = uow.items.get(message.item_id)
        sent_at = now()
        # The follow-up first: where the item is already followed up, its look-up is a query,
        # which would flush the notice's change on its own if that were made (in the session)
        # before; made after, the changes all go in one flush (the audit append's).
        open_followup(uow, message, sent_at)  # re-check until gone (services.followup)
        # By id: the reserve step's row is another session's, and loading it again only to
        # change two columns cost a query per notice.
        found = uow.notices.mark_sent(message.notice_id, sent_at)
        assert found, f"notice {message.notice_id} was reserved before it was sent"
        reason = f"takedown notice sent to {message.abuse_email} ({message.hoster}); removal expected within 24 hours"
        move_item(uow, message.item_id, ItemState.NOTICE_SENT, reason, self.name)
        uow.audit.append(self.name, "notice_sent", message.notice_id, message.abuse_email)
        del item
        return [self._event(message, "sent", reason)]

    def _failed(self, uow: UnitOfWork, messages: list[TakedownNotice], exc: Exception) -> list[Outgoing] | RetryLater:
        _lock_items(uow, messages)
        if not isinstance(exc, NotDelivered):
            detail = "no final answer from the mail server" if isinstance(exc, DeliveryUnknown) else "the mailer failed"
            members = [(self._notice(uow, m), m) for m in messages]
            return self._unknown(uow, members, f"{detail}: {exc}",
                                 f"the notice may have reached the mail server, which never confirmed it ({exc})")
        if not exc.permanent:
            # Nothing reached the hoster: a retry is safe (the runtime backs off).
            for m in messages:
                self._notice(uow, m).status = "failed"
            return RetryLater(exc)
        out: list[Outgoing] = []
        for message in messages:
            self._notice(uow, message).status = "refused"
            reason = (f"the mail server refused the notice to {message.abuse_email} for good ({exc}); "
                      "an analyst decides how to reach the hoster")
            move_item(uow, message.item_id, ItemState.AWAITING_ASSESSMENT, reason, self.name)
            uow.audit.append(self.name, "notice_refused", message.notice_id, str(exc))
            out.append(self._event(message, "bounced", reason))
        return out

    def _unknown(
        self, uow: UnitOfWork, members: list[tuple[Notice, TakedownNotice]], event_detail: str, why: str
    ) -> list[Outgoing]:
        out: list[Outgoing] = []
        for notice, message in members:
            notice.status = "delivery_unknown"
            move_item(
                uow, message.item_id, ItemState.NOTICE_UNCONFIRMED,
                f"{why}; not re-sent to avoid a duplicate: an operator checks the SMTP log for {notice.message_id}",
                self.name,
            )
            uow.audit.append(self.name, "notice_delivery_unknown", notice.id, notice.message_id)
            out.append(self._event(message, "delivery_unknown", event_detail))
        return out

    @staticmethod
    def _notice(uow: UnitOfWork, message: TakedownNotice) -> Notice:
        notice = uow.notices.get(message.notice_id)
        assert notice is not None
        return notice

    def _event(self, notice: TakedownNotice, kind: str, detail: str) -> Outgoing:
        return Outgoing(
            "notices.events",
            NoticeEvent(
                event_id=f"{notice.notice_id}:{kind}",
                item_id=notice.item_id,
                kind=kind,  # type: ignore[arg-type]
                notice_id=notice.notice_id,
                detail=detail,
            ),
        )


def _lock_items(uow: UnitOfWork, messages: list[TakedownNotice]) -> list[Item]:
    """Lock an e-mail's items before its outcome is recorded (``ItemRepository.lock``): the
    follow-up a sent notice opens and the item's state are read and written under that lock,
    so another notice of the same item, recorded at the same time by another worker (or, on
    Kafka, another e-mail in flight in this one), waits instead of failing on the follow-up
    row it also found missing -- after its e-mail went out."""
    return uow.items.lock([m.item_id for m in messages])
