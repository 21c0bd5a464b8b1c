"""Base class for every topic message: frozen, JSON on the wire, with ``schema_version``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 1


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    """A message on a topic. Unknown fields are ignored so old consumers survive new producers."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()
