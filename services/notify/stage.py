"""Notify: send Notice-and-Takedown e-mails, at most once each.

The notice row is committed as ``sending`` *before* the SMTP conversation and
marked ``sent`` after. A redelivered notice that is already ``sent`` only
re-publishes its event; one found still ``sending`` (the process died mid-send)
is not sent again, because the hoster may already have it: it is marked
``delivery_unknown`` and raised to operators with its Message-ID.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from hotline.db.models import Notice
from hotline.stage import Outgoing
from hotline.store import Store, now
from schemas import Message
from schemas.notices import NoticeEvent, TakedownNotice
from services.notify.mailer import Mailer
from services.notify.notice import message_id, render_notice


@dataclass
class NotifyStage:
    mailer: Mailer
    sender: str
    hotline_name: str = "Hotline"

    name: ClassVar[str] = "notify"
    inputs: ClassVar[tuple[str, ...]] = ("notices.ntd",)

    def handle(self, topic: str, message: Message, store: Store) -> list[Outgoing]:
        assert isinstance(message, TakedownNotice)
        notice = store.get_notice(message.notice_id)
        if notice is not None:
            if notice.status == "sent":
                return [self._event(message, "sent", f"notice sent to {notice.abuse_email}")]
            if notice.status == "sending":
                notice.status = "delivery_unknown"
                item = store.get_item(message.item_id)
                if item is not None:
                    store.set_state(
                        item,
                        "notice_unconfirmed",
                        f"the process stopped while sending {notice.message_id}; not re-sent to avoid a "
                        "duplicate: an operator checks the SMTP log",
                        self.name,
                    )
                store.audit(self.name, "notice_delivery_unknown", notice.id, notice.message_id)
                return [self._event(message, "delivery_unknown", "delivery outcome unknown after a restart")]
            if notice.status == "delivery_unknown":
                return [self._event(message, "delivery_unknown", "delivery outcome unknown after a restart")]
            # status "failed": the last attempt was refused by the SMTP server; try again.

        email = render_notice(message, self.sender, self.hotline_name)
        if notice is None:
            notice = Notice(
                id=message.notice_id,
                item_id=message.item_id,
                hoster=message.hoster,
                abuse_email=message.abuse_email,
                message_id=message_id(message.notice_id, self.sender.rsplit("@", 1)[-1]),
                status="sending",
                created_at=now(),
            )
            store.add_notice(notice)
        notice.status = "sending"
        store.commit()  # the intent is durable before the side effect
        try:
            self.mailer.send(email)
        except Exception:
            # The SMTP server refused or was unreachable: nothing was delivered, so a retry is safe.
            notice.status = "failed"
            store.commit()
            raise
        notice = store.get_notice(message.notice_id)
        assert notice is not None
        notice.status = "sent"
        notice.sent_at = now()
        item = store.get_item(message.item_id)
        reason = f"takedown notice sent to {message.abuse_email} ({message.hoster}); removal expected within 24 hours"
        if item is not None:
            store.set_state(item, "notice_sent", reason, self.name)
        store.audit(self.name, "notice_sent", message.notice_id, message.abuse_email)
        return [self._event(message, "sent", reason)]

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
