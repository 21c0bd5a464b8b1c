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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hotline.kernel.clock import now
from hotline.kernel.messages import Outgoing
from hotline.kernel.ports import UnitOfWork
from hotline.kernel.stage import Result, RetryLater, SideEffect, move_item
from hotline.kernel.states import ItemState
from schemas import Message
from schemas.notices import NoticeEvent, TakedownNotice
from services.followup.opening import open_followup
from services.notify.mailer import DeliveryUnknown, Mailer, NotDelivered
from services.notify.notice import message_id, render_notice

UNKNOWN_AFTER_RESTART = "delivery outcome unknown after a restart"


@dataclass
class NotifyStage:
    mailer: Mailer
    sender: str
    hotline_name: str = "Hotline"
    notice_language: str = "auto"  # auto | nl | en (services.notify.notice.notice_language)

    name: ClassVar[str] = "notify"
    inputs: ClassVar[tuple[str, ...]] = ("notices.ntd",)

    def handle(self, topic: str, message: Message, uow: UnitOfWork) -> Result:
        assert isinstance(message, TakedownNotice)
        notice = uow.notices.get(message.notice_id)
        if notice is not None:
            if notice.status == "sent":
                return [self._event(message, "sent", f"notice sent to {notice.abuse_email}")]
            if notice.status == "sending":
                return self._unknown(uow, message, UNKNOWN_AFTER_RESTART,
                                     f"the process stopped while sending {notice.message_id}")
            if notice.status == "delivery_unknown":
                return [self._event(message, "delivery_unknown", UNKNOWN_AFTER_RESTART)]
            if notice.status == "refused":
                return [self._event(message, "bounced", f"the mail server refused the notice to {notice.abuse_email}")]
            if notice.status == "superseded":
                # An operator sent it to another address instead (services/operations): the
                # message still on its way here (a retry, a redelivery) must not send it.
                return []
            # status "failed": the last attempt did not reach the server (or an operator found
            # it was not delivered and asked for it again); try again.
            notice.status = "sending"
        else:
            uow.notices.reserve(
                message.notice_id, message.item_id, message.hoster, message.abuse_email,
                message_id(message.notice_id, self.sender.rsplit("@", 1)[-1]),
            )
        email = render_notice(message, self.sender, self.hotline_name, self.notice_language)
        return SideEffect(
            act=lambda: self.mailer.send(email),
            done=lambda u, _: self._sent(u, message),
            failed=lambda u, exc: self._failed(u, message, exc),
        )

    def _sent(self, uow: UnitOfWork, message: TakedownNotice) -> list[Outgoing]:
        notice = uow.notices.get(message.notice_id)
        assert notice is not None
        notice.status = "sent"
        notice.sent_at = now()
        open_followup(uow, message, notice.sent_at)  # re-check until gone (services.followup)
        reason = f"takedown notice sent to {message.abuse_email} ({message.hoster}); removal expected within 24 hours"
        move_item(uow, message.item_id, ItemState.NOTICE_SENT, reason, self.name)
        uow.audit.append(self.name, "notice_sent", message.notice_id, message.abuse_email)
        return [self._event(message, "sent", reason)]

    def _failed(self, uow: UnitOfWork, message: TakedownNotice, exc: Exception) -> list[Outgoing] | RetryLater:
        if not isinstance(exc, NotDelivered):
            detail = "no final answer from the mail server" if isinstance(exc, DeliveryUnknown) else "the mailer failed"
            return self._unknown(uow, message, f"{detail}: {exc}",
                                 f"the notice may have reached the mail server, which never confirmed it ({exc})")
        notice = uow.notices.get(message.notice_id)
        assert notice is not None
        if not exc.permanent:
            # Nothing reached the hoster: a retry is safe (the runtime backs off).
            notice.status = "failed"
            return RetryLater(exc)
        notice.status = "refused"
        reason = (f"the mail server refused the notice to {message.abuse_email} for good ({exc}); "
                  "an analyst decides how to reach the hoster")
        move_item(uow, message.item_id, ItemState.AWAITING_ASSESSMENT, reason, self.name)
        uow.audit.append(self.name, "notice_refused", message.notice_id, str(exc))
        return [self._event(message, "bounced", reason)]

    def _unknown(self, uow: UnitOfWork, message: TakedownNotice, event_detail: str, why: str) -> list[Outgoing]:
        notice = uow.notices.get(message.notice_id)
        assert notice is not None
        notice.status = "delivery_unknown"
        move_item(
            uow, message.item_id, ItemState.NOTICE_UNCONFIRMED,
            f"{why}; not re-sent to avoid a duplicate: an operator checks the SMTP log for {notice.message_id}",
            self.name,
        )
        uow.audit.append(self.name, "notice_delivery_unknown", notice.id, notice.message_id)
        return [self._event(message, "delivery_unknown", event_detail)]

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
