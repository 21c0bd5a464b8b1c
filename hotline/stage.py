"""What a stage is, independent of transport.

A stage takes one message from a topic and returns the messages it produces
(``Outgoing``); state changes go through the ``Store`` it is handed. The two
runtimes (embedded bus, faust on Kafka) only wire stages to topics.

The exception type says what happens next (after getsentry/arroyo):
``InvalidMessage`` never succeeds on retry and goes to ``reports.rejected``;
any other exception is treated as transient and the message is retried.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import ValidationError

from schemas import TOPICS, Message
from schemas.reports import ReportRejected

if TYPE_CHECKING:
    from hotline.store import Store

log = logging.getLogger(__name__)

REJECTED = "reports.rejected"


@dataclass(frozen=True)
class Outgoing:
    topic: str
    message: Message

    @property
    def key(self) -> str:
        return TOPICS[self.topic].key_of(self.message)


class InvalidMessage(Exception):
    """Input that can never be processed; it goes to ``reports.rejected`` with this reason."""

    def __init__(self, code: str, reason: str, report_id: str | None = None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.report_id = report_id


class Stage(Protocol):
    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]

    def handle(self, topic: str, message: Message, store: Store) -> list[Outgoing]: ...


def decode(topic: str, raw: bytes | str) -> Message:
    """Parse and validate a topic message; raise ``InvalidMessage`` with the reason otherwise."""
    try:
        return TOPICS[topic].model.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidMessage("malformed_message", f"not a valid {topic} message: {problems}") from exc


def _payload(raw: bytes | str) -> Any:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        return json.loads(text)
    except ValueError:
        return text


def rejection(stage: str, topic: str, raw: bytes | str, err: InvalidMessage) -> Outgoing:
    payload = _payload(raw)
    report_id = err.report_id
    if report_id is None and isinstance(payload, dict):
        rid = payload.get("report_id")
        report_id = rid if isinstance(rid, str) else None
    return Outgoing(
        REJECTED,
        ReportRejected(
            report_id=report_id,
            stage=stage,
            reason_code=err.code,
            reason=err.reason,
            payload=payload,
            source_topic=topic,
        ),
    )


def run_stage(stage: Stage, topic: str, raw: bytes | str, store: Store) -> list[Outgoing]:
    """Decode, handle, and turn invalid input into a rejection. Transient errors propagate."""
    try:
        message = decode(topic, raw)
        return stage.handle(topic, message, store)
    except InvalidMessage as err:
        log.warning("stage %s rejected a message from %s: %s", stage.name, topic, err)
        out = rejection(stage.name, topic, raw, err)
        rid = out.message.report_id  # type: ignore[attr-defined]
        if err.report_id is None and rid and len(rid) <= 64:
            # A malformed message whose report id is still readable: record that report as
            # rejected too, or it would be a silent drop (404 on its status page).
            err.report_id = rid
        store.rollback()
        store.record_rejection(stage.name, err)
        return [out]


# An exception that is not a known infrastructure failure (a bug, or input that trips one)
# is retried this many times; then the message is parked so that it cannot stop the stage.
MAX_UNEXPECTED_FAILURES = 5


def is_infrastructure_error(exc: BaseException) -> bool:
    """Failures of something outside the message (network, SMTP, database, broker): these
    are retried for as long as they last, never parked, because the message is fine."""
    import smtplib

    import httpx
    from sqlalchemy import exc as sa_exc

    infra: tuple[type[BaseException], ...] = (
        OSError,
        TimeoutError,
        smtplib.SMTPException,
        httpx.TransportError,
        sa_exc.OperationalError,
        sa_exc.InterfaceError,
        sa_exc.IntegrityError,  # a race with another worker: the retry sees the winner's row
    )
    try:
        from aiokafka.errors import KafkaError

        infra = (*infra, KafkaError)
    except ImportError:  # pragma: no cover - aiokafka is a dependency
        pass
    return isinstance(exc, infra)


def park(stage: Stage, topic: str, raw: bytes | str, store: Store, exc: BaseException, attempts: int) -> list[Outgoing]:
    """Give up on a message that keeps failing unexpectedly: publish it to ``reports.rejected``
    with the error, and put its item (if any) in front of an analyst with the reason, so the
    report still ends in a recorded state and the stage moves on."""
    store.rollback()
    reason = (
        f"stage {stage.name} failed {attempts} times on this message ({type(exc).__name__}: {exc}); "
        "parked for an operator"
    )
    payload = _payload(raw)
    report_id = payload.get("report_id") if isinstance(payload, dict) else None
    err = InvalidMessage("processing_failed", reason, report_id if isinstance(report_id, str) else None)
    item_id = payload.get("item_id") if isinstance(payload, dict) else None
    if isinstance(item_id, str):
        item = store.get_item(item_id)
        from hotline.db.models import FINAL_STATES

        if item is not None and item.state not in FINAL_STATES:
            store.set_state(item, "awaiting_assessment", reason + "; an analyst decides", stage.name)
    store.record_rejection(stage.name, err)
    log.error("stage %s parked a message from %s: %s", stage.name, topic, reason)
    return [rejection(stage.name, topic, raw, err)]
