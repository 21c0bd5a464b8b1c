"""The operators' decisions on notices that need a person (services/operations/logic.py), on the
in-memory unit of work, with the real notify stage and a recording mailer around them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from hotline.kernel.clock import now
from hotline.kernel.states import ItemState, can_transition
from hotline.storage.memory import MemoryUnitOfWork
from schemas.items import ItemClassified
from schemas.notices import NoticeEvent, TakedownNotice
from services.classify.stage import takedown_notice
from services.notify.mailer import DeliveryUnknown, NotDelivered, RecordingMailer
from services.operations.logic import (
    OperationRefused,
    mark_delivered,
    needing_operator,
    resend,
    send_elsewhere,
)
from tests.unit.stagekit import deliver, make_item, notice_for, notify_stage, of_topic

ALERT = 3600


def classified_for(item_id: str) -> ItemClassified:
    n = notice_for(item_id)
    return ItemClassified(item_id=item_id, url=n.url, online=True, images=n.images, hosting=n.hosting,
                          known=True, route="ntd", reason="known material hosted at home")


def sent_once(fail: BaseException) -> tuple[MemoryUnitOfWork, str, RecordingMailer]:
    """An item whose first notice ended as ``fail`` made it end; returns (uow, item id, mailer)."""
    uow = MemoryUnitOfWork()
    item_id = make_item(uow, ItemState.NOTICE_QUEUED, classified_for("x"))
    item = uow.items.get(item_id)
    assert item is not None
    message = takedown_notice(ItemClassified.model_validate(item.classification))
    assert message is not None
    mailer = RecordingMailer(fail_with=[fail])
    try:
        deliver(notify_stage(mailer), "notices.ntd", message, uow)
    except NotDelivered:
        pass  # temporary: the runtime would retry
    uow.commit()
    return uow, item_id, mailer


def publish(uow: MemoryUnitOfWork, out: list) -> list:  # type: ignore[type-arg]
    uow.enqueue(out)
    uow.commit()
    return out


def run_notify(uow: MemoryUnitOfWork, out: list, mailer: RecordingMailer) -> None:  # type: ignore[type-arg]
    for message in of_topic(out, "notices.ntd"):
        deliver(notify_stage(mailer), "notices.ntd", message, uow)
        uow.commit()


def test_resend_and_back_to_unconfirmed_are_allowed_transitions() -> None:
    assert can_transition(ItemState.NOTICE_UNCONFIRMED, ItemState.NOTICE_QUEUED)
    assert can_transition(ItemState.NOTICE_UNCONFIRMED, ItemState.NOTICE_SENT)


def test_the_rebuilt_notice_is_the_one_classify_published() -> None:
    c = classified_for("item-1")
    first, again = takedown_notice(c), takedown_notice(c)
    assert first is not None and first == again
    assert first.notice_id == "ntd-item-1" and first.abuse_email == "abuse@hoster-a.test"
    assert first.created_at == c.classified_at
    other = takedown_notice(c, "ntd-item-1-2", "abuse@elsewhere.test")
    assert other is not None and other.notice_id == "ntd-item-1-2" and other.abuse_email == "abuse@elsewhere.test"
    assert takedown_notice(c.model_copy(update={"route": "assessment"})) is None


def test_delivery_unknown_is_listed_and_marked_delivered_without_a_mail() -> None:
    uow, item_id, mailer = sent_once(DeliveryUnknown("no reply"))
    (pending,) = needing_operator(uow, now(), ALERT)
    assert pending.notice.status == "delivery_unknown" and pending.item.id == item_id
    assert pending.actions == ("mark_delivered", "resend", "send_elsewhere")
    assert "SMTP log" in pending.why and "no reply" in pending.last_error and "not re-sent" in pending.last_error

    at = now()
    out = publish(uow, mark_delivered(uow, f"ntd-{item_id}", operator="op", at=at))
    (event,) = of_topic(out, "notices.events")
    assert isinstance(event, NoticeEvent) and event.kind == "sent" and event.notice_id == f"ntd-{item_id}"
    notice, item = uow.notices.get(f"ntd-{item_id}"), uow.items.get(item_id)
    assert notice is not None and notice.status == "sent" and notice.sent_at == at
    assert item is not None and item.state == ItemState.NOTICE_SENT and "op" in item.reason
    assert ("op", "notice_marked_delivered", f"ntd-{item_id}", notice.message_id) in uow.state.audit
    assert len(mailer.attempts) == 1 and not of_topic(out, "notices.ntd")
    assert needing_operator(uow, now(), ALERT) == []
    # A second click: refused, nothing changes.
    with pytest.raises(OperationRefused) as refused:
        mark_delivered(uow, f"ntd-{item_id}", operator="op", at=now())
    assert refused.value.status == 409


def test_resend_sends_the_same_notice_once_more() -> None:
    uow, item_id, mailer = sent_once(DeliveryUnknown("no reply"))
    out = publish(uow, resend(uow, f"ntd-{item_id}", operator="op"))
    (message,) = of_topic(out, "notices.ntd")
    assert isinstance(message, TakedownNotice) and message.notice_id == f"ntd-{item_id}"
    item = uow.items.get(item_id)
    assert item is not None and item.state == ItemState.NOTICE_QUEUED
    assert uow.notices.get(f"ntd-{item_id}").status == "failed"  # type: ignore[union-attr]
    assert any(a[:3] == ("op", "notice_resent", f"ntd-{item_id}") for a in uow.state.audit)
    with pytest.raises(OperationRefused) as twice:
        resend(uow, f"ntd-{item_id}", operator="op")
    assert twice.value.status == 409

    run_notify(uow, out, mailer)
    run_notify(uow, out, mailer)  # a redelivery of the resend: still one more mail only
    assert len(mailer.sent) == 1 and len(mailer.attempts) == 2
    assert mailer.sent[0]["Message-ID"] == mailer.attempts[0]["Message-ID"]
    assert uow.items.get(item_id).state == ItemState.NOTICE_SENT  # type: ignore[union-attr]


def test_a_refused_notice_can_be_resent_but_not_marked_delivered() -> None:
    uow, item_id, _ = sent_once(NotDelivered("550 no such mailbox", permanent=True, code=550))
    (pending,) = needing_operator(uow, now(), ALERT)
    assert pending.notice.status == "refused" and pending.actions == ("resend", "send_elsewhere")
    assert "550" in pending.last_error
    with pytest.raises(OperationRefused) as refused:
        mark_delivered(uow, f"ntd-{item_id}", operator="op", at=now())
    assert refused.value.status == 409
    publish(uow, resend(uow, f"ntd-{item_id}", operator="op"))
    assert uow.items.get(item_id).state == ItemState.NOTICE_QUEUED  # type: ignore[union-attr]


def test_send_elsewhere_makes_a_new_notice_and_supersedes_the_old() -> None:
    uow, item_id, mailer = sent_once(DeliveryUnknown("no reply"))
    with pytest.raises(OperationRefused) as bad:
        send_elsewhere(uow, f"ntd-{item_id}", operator="op", abuse_email="abuse@x.test\r\nBcc: y@z.test")
    assert bad.value.status == 422
    with pytest.raises(OperationRefused) as same:
        send_elsewhere(uow, f"ntd-{item_id}", operator="op", abuse_email="ABUSE@hoster-a.test")
    assert same.value.status == 422
    out = publish(uow, send_elsewhere(uow, f"ntd-{item_id}", operator="op", abuse_email=" abuse@other.test "))
    (message,) = of_topic(out, "notices.ntd")
    assert message.notice_id == f"ntd-{item_id}-2" and message.abuse_email == "abuse@other.test"
    assert uow.notices.get(f"ntd-{item_id}").status == "superseded"  # type: ignore[union-attr]
    with pytest.raises(OperationRefused) as twice:
        send_elsewhere(uow, f"ntd-{item_id}", operator="op", abuse_email="abuse@third.test")
    assert twice.value.status == 409

    run_notify(uow, out, mailer)
    assert [m["To"] for m in mailer.sent] == ["abuse@other.test"]
    assert uow.notices.get(f"ntd-{item_id}-2").status == "sent"  # type: ignore[union-attr]
    # The old notice's message, redelivered or retried, sends nothing.
    old = takedown_notice(classified_for(item_id))
    assert deliver(notify_stage(mailer), "notices.ntd", old, uow) == []
    assert len(mailer.sent) == 1


def test_failed_notices_show_after_the_alert_time_and_can_only_go_elsewhere() -> None:
    uow, item_id, _ = sent_once(NotDelivered("connection refused", permanent=False))
    notice = uow.notices.get(f"ntd-{item_id}")
    assert notice is not None and notice.status == "failed"
    assert needing_operator(uow, now(), ALERT) == []
    (pending,) = needing_operator(uow, now() + timedelta(seconds=ALERT + 1), ALERT)
    assert pending.actions == ("send_elsewhere",)
    for action in (lambda: resend(uow, notice.id, operator="op"),
                   lambda: mark_delivered(uow, notice.id, operator="op", at=now())):
        with pytest.raises(OperationRefused) as refused:
            action()
        assert refused.value.status == 409
    publish(uow, send_elsewhere(uow, notice.id, operator="op", abuse_email="abuse@other.test"))
    assert uow.items.get(item_id).state == ItemState.NOTICE_QUEUED  # type: ignore[union-attr]


def test_closed_items_and_unknown_notices() -> None:
    uow, item_id, _ = sent_once(DeliveryUnknown("no reply"))
    item = uow.items.get(item_id)
    assert item is not None
    uow.items.set_state(item, ItemState.REMOVED, "found removed", "test")
    uow.commit()
    assert needing_operator(uow, now(), ALERT) == []
    with pytest.raises(OperationRefused) as closed:
        resend(uow, f"ntd-{item_id}", operator="op")
    assert closed.value.status == 409
    with pytest.raises(OperationRefused) as missing:
        resend(uow, "ntd-nope", operator="op")
    assert missing.value.status == 404
