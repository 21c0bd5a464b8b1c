"""Who is calling: bearer tokens mapped to accounts with one role each.

Tokens are random, shown once by ``hotline users add`` and stored only as
SHA-256, so a database leak does not hand out working credentials.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request, status

from hotline.storage.unit_of_work import SqlUnitOfWork

ROLES = ("admin", "analyst", "police", "hoster", "partner", "senior")
# A role that includes others: a senior analyst is an analyst who may also change decisions.
INCLUDES: dict[str, frozenset[str]] = {"senior": frozenset({"analyst"})}


@dataclass(frozen=True)
class Caller:
    user_id: int
    name: str
    role: str
    country: str | None = None  # a partner account's country (``hotline users add --country``)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def get_store(request: Request) -> Iterator[SqlUnitOfWork]:
    with request.app.state.system.request_sessions()() as session:
        yield SqlUnitOfWork(session)


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.cookies.get("hotline_token")


def optional_caller(request: Request, store: SqlUnitOfWork = Depends(get_store)) -> Caller | None:
    token = _token(request)
    if token is None:
        return None
    user = store.users.by_token(token)
    if user is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return Caller(user.id, user.name, user.role, user.country)


def require_role(*roles: str) -> Callable[..., Caller]:
    def dependency(caller: Caller | None = Depends(optional_caller)) -> Caller:
        if caller is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "authentication required: send Authorization: Bearer TOKEN",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if caller.role not in roles and caller.role != "admin" and not INCLUDES.get(caller.role, frozenset()) & set(roles):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the role {' or '.join(roles)}")
        return caller

    return dependency
