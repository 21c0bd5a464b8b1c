"""Messages between stages: what a stage produces (``Outgoing``), how wire bytes become a
validated topic message, and how input that can never be processed becomes a
``reports.rejected`` message with the original payload and a reason.

The exception type says what happens next (after getsentry/arroyo): ``InvalidMessage``
never succeeds on retry and goes to ``reports.rejected``; anything else is a failure
the failure policy (``hotline.kernel.failures``) decides about.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from schemas import TOPICS, Message
from schemas.reports import ReportRejected

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


def decode(topic: str, raw: bytes | str) -> Message:
    """Parse and validate a topic message; raise ``InvalidMessage`` with the reason otherwise."""
    try:
        return TOPICS[topic].model.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidMessage("malformed_message", f"not a valid {topic} message: {problems}") from exc


def payload_of(raw: bytes | str) -> Any:
    """The message as JSON if it parses (kept whole in a rejection), else as text."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        return json.loads(text)
    except ValueError:
        return text


def field_of(raw: bytes | str, name: str) -> str | None:
    """A top-level string field of a message that may not validate (e.g. its report id)."""
    payload = payload_of(raw)
    value = payload.get(name) if isinstance(payload, dict) else None
    return value if isinstance(value, str) else None


def rejection(stage: str, topic: str, raw: bytes | str, err: InvalidMessage) -> Outgoing:
    return Outgoing(
        REJECTED,
        ReportRejected(
            report_id=err.report_id if err.report_id is not None else field_of(raw, "report_id"),
            stage=stage,
            reason_code=err.code,
            reason=err.reason,
            payload=payload_of(raw),
            source_topic=topic,
        ),
    )
