"""Messages on ``reports.submitted`` and ``reports.rejected``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from schemas.base import Message, new_id, utcnow

Channel = Literal["web", "api", "csv", "partner", "police"]


class ReportSubmitted(Message):
    """A raw report as a channel received it. URLs are *not* validated here: ingest does that,
    so that a bad URL becomes a recorded rejection with a reason instead of a lost message."""

    report_id: str = Field(default_factory=new_id, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    channel: Channel = "api"
    urls: list[str]
    description: str | None = None
    reporter_email: str | None = None  # sealed ("v1:…", hotline.storage.reporter_address), never clear from our channels
    partner_reference: str | None = None
    partner_country: str | None = None
    submitted_at: datetime = Field(default_factory=utcnow)


class ReportRejected(Message):
    """Bad input from any stage: the original payload, which stage, and why (code + words)."""

    report_id: str | None = None
    stage: str
    reason_code: str
    reason: str
    payload: Any = None
    source_topic: str | None = None
    rejected_at: datetime = Field(default_factory=utcnow)
