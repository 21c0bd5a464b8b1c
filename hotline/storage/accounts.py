"""Accounts (API tokens, stored only as SHA-256) and hosters' HashCheck usage."""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.orm import Session

from hotline.kernel.clock import now
from hotline.storage.models import HashCheckStat, User


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SqlUsers:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, name: str, role: str, token: str, country: str | None = None) -> User:
        user = User(name=name, role=role, token_sha256=token_digest(token), created_at=now(),
                    country=country.upper() if country else None)
        self.session.add(user)
        self.session.flush()
        return user

    def by_token(self, token: str) -> User | None:
        return self.session.scalar(select(User).where(User.token_sha256 == token_digest(token)))

    def by_name(self, name: str) -> User | None:
        return self.session.scalar(select(User).where(User.name == name))


class SqlHashCheckStats:
    def __init__(self, session: Session) -> None:
        self.session = session

    def record(self, user_id: int, week: str, checks: int, hits: int) -> None:
        """Add one HashCheck request's counts to the hoster's row for ``week`` (e.g. 2026-W48).

        One atomic INSERT .. ON CONFLICT DO UPDATE, so concurrent requests of the
        same hoster never lose an increment and a request costs one statement.
        """
        values = {"user_id": user_id, "week": week, "checks": checks, "hits": hits}
        dialect = self.session.get_bind().dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = pg_insert(HashCheckStat).values(**values)
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(HashCheckStat).values(**values)  # type: ignore[assignment]
        else:  # pragma: no cover - only the two supported backends run here
            raise NotImplementedError(f"no upsert for database dialect {dialect}")
        self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=[HashCheckStat.user_id, HashCheckStat.week],
                set_={
                    "checks": HashCheckStat.checks + stmt.excluded.checks,
                    "hits": HashCheckStat.hits + stmt.excluded.hits,
                },
            )
        )

    def per_week(self, user_id: int | None = None) -> list[tuple[str, str, int, int]]:
        """(week, hoster name, checks, hits) per hoster per week, oldest week first;
        only ``user_id``'s rows when given."""
        q = (
            select(HashCheckStat.week, User.name, HashCheckStat.checks, HashCheckStat.hits)
            .join(User, User.id == HashCheckStat.user_id)
            .order_by(HashCheckStat.week, User.name)
        )
        if user_id is not None:
            q = q.where(HashCheckStat.user_id == user_id)
        return [(w, n, int(c), int(h)) for w, n, c, h in self.session.execute(q)]
