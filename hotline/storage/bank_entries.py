"""Rows of the bank of known material, one at a time (analysts' confirmations, tests).
Bulk import, export, retirement and the matcher live in ``services/bank``."""

from __future__ import annotations

from sqlalchemy.orm import Session

from hotline.kernel.clock import now
from hotline.storage.models import BankEntry


class SqlBankEntries:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, *, category: str, source: str, **hashes: str | None) -> BankEntry:
        entry = BankEntry(category=category, source=source, added_at=now(), **hashes)
        self.session.add(entry)
        self.session.flush()
        return entry
