"""Retention of reporter contact details: sealed addresses are removed when their time is up.

A reporter's address (sealed, ``hotline.storage.reporter_address``) is kept so the hotline can
write back while the report is worked on; after ``HOTLINE_REPORTER_RETENTION_DAYS`` there is no
reason left to hold it, so it is removed from every place it can be in:

- ``reports.reporter_email`` (the report itself) once the report is older than the cutoff;
- ``rejections.payload`` (the operators' copy of a rejected message: a resubmission needs the
  address, so the copy keeps it until the cutoff);
- ``bus_messages`` (the embedded runtime's topic log, and on Kafka the outbox): a message on a
  topic that carries addresses (:data:`CONTACT_TOPICS`) loses its address as soon as *every*
  consumer of its topic has passed it (nothing will read it again: a consumed message is only
  history), and at the cutoff in any case. With ``consumers=None`` (Kafka: the rows are the
  outbox, relayed and deleted; a row still there is unpublished) only the cutoff applies.

The address is removed from the JSON wherever it is nested (a ``reports.rejected`` message
carries the original report as ``payload``); text that is not JSON (the raw payload of a
broken message) loses every ``"reporter_email": "..."`` pair and every sealed token. Counts
only are returned (and audit-logged by the caller): never an address.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, not_, or_, select, update
from sqlalchemy.orm import Session

from hotline.storage.models import BusMessage, BusOffset, Rejection, Report

CONTACT_TOPICS = ("reports.submitted", "reports.rejected")
"""Topics whose messages can carry a reporter address (the report, or a rejection's payload)."""

FIELD = "reporter_email"
_PAIR = re.compile(r'(\\*"reporter_email\\*"\s*:\s*)(\\*"(?:[^"\\]|\\.)*?\\*")')
_SEALED = re.compile(r"v1:[A-Za-z0-9_-]{20,}")
BATCH = 500
_NULL = '"reporter_email":null'
_COMPACT = (",", ":")


@dataclass
class PurgeCounts:
    reports: int = 0
    rejections: int = 0
    bus_messages: int = 0

    @property
    def total(self) -> int:
        return self.reports + self.rejections + self.bus_messages

    def as_dict(self) -> dict[str, int]:
        return {"reports": self.reports, "rejections": self.rejections, "bus_messages": self.bus_messages}


def strip_value(value: Any) -> tuple[Any, bool]:
    """``value`` without any reporter address (JSON data, nested anywhere); and whether one was there."""
    if isinstance(value, dict):
        changed = False
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k == FIELD and v is not None:
                out[k] = None
                changed = True
                continue
            out[k], c = strip_value(v)
            changed = changed or c
        return out, changed
    if isinstance(value, list):
        items = [strip_value(v) for v in value]
        return [v for v, _ in items], any(c for _, c in items)
    if isinstance(value, str) and (FIELD in value or "v1:" in value):
        return strip_text(value)
    return value, False


def strip_text(text: str) -> tuple[str, bool]:
    """A JSON text (a bus message) without reporter addresses; text that is no JSON is
    cleaned by pattern (the pair, and any sealed token)."""
    try:
        data = json.loads(text)
    except ValueError:
        cleaned = _SEALED.sub("", _PAIR.sub(r"\1null", text))
        return cleaned, cleaned != text
    if isinstance(data, (dict, list)):
        stripped, changed = strip_value(data)
        return (json.dumps(stripped, ensure_ascii=False, separators=_COMPACT) if changed else text), changed
    if isinstance(data, str):
        inner, changed = strip_text(data)
        return (json.dumps(inner, ensure_ascii=False, separators=_COMPACT) if changed else text), changed
    return text, False


def _may_hold_address() -> Any:
    """Rows worth parsing: a sealed token, or the field with something other than null (a
    message our channels wrote without an address has ``"reporter_email":null``, and one
    already stripped too), so a tick does not parse the whole bus again and again."""
    return or_(
        BusMessage.value.contains("v1:"),
        and_(BusMessage.value.contains(FIELD), not_(BusMessage.value.contains(_NULL))),
    )


def _consumed_up_to(session: Session, consumers: Sequence[str]) -> int | None:
    """The bus id every one of ``consumers`` has passed (None: no consumer, so every message)."""
    if not consumers:
        return None
    positions = []
    for consumer in consumers:
        pos = session.scalar(select(func.max(BusOffset.position)).where(BusOffset.consumer == consumer))
        positions.append(int(pos or 0))
    return min(positions)


def purge_contacts(
    session: Session,
    cutoff: datetime,
    consumers: Mapping[str, Sequence[str]] | None = None,
) -> PurgeCounts:
    """Remove reporter addresses that arrived before ``cutoff``, and (``consumers``: topic ->
    names of the embedded stages that read it) those of bus messages every consumer has
    passed. Flushes, does not commit: the caller's transaction owns it."""
    counts = PurgeCounts()
    result = session.execute(
        update(Report)
        .where(Report.reporter_email.is_not(None), Report.submitted_at < cutoff)
        .values(reporter_email=None)
    )
    counts.reports = int(getattr(result, "rowcount", 0) or 0)
    for rejection in session.scalars(
        select(Rejection).where(Rejection.at < cutoff, Rejection.payload.is_not(None))
    ):
        stripped, changed = strip_value(rejection.payload)
        if changed:
            rejection.payload = stripped
            counts.rejections += 1
    for topic in CONTACT_TOPICS:
        conditions = [BusMessage.created_at < cutoff]
        if consumers is not None:
            passed = _consumed_up_to(session, consumers.get(topic, ()))
            conditions.append(BusMessage.id > -1 if passed is None else BusMessage.id <= passed)
        last_id = 0
        while True:
            rows = session.execute(
                select(BusMessage.id, BusMessage.value)
                .where(BusMessage.topic == topic, BusMessage.id > last_id, or_(*conditions), _may_hold_address())
                .order_by(BusMessage.id)
                .limit(BATCH)
            ).all()
            if not rows:
                break
            for row_id, value in rows:
                last_id = int(row_id)
                stripped_text, changed = strip_text(str(value))
                if changed:
                    session.execute(update(BusMessage).where(BusMessage.id == row_id).values(value=stripped_text))
                    counts.bus_messages += 1
    session.flush()
    return counts
