"""The one clock: timezone-aware UTC, so SQLite and PostgreSQL rows compare alike."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)
