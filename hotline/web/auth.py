"""Who is calling: bearer tokens mapped to accounts with one role each.

Tokens are random, shown once by ``hotline users add`` and stored only as
SHA-256, so a database leak does not hand out working credentials.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request, status
from starlette.concurrency import run_in_threadpool

from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.ratelimit import Lockout, RateLimiter, retry_after

ROLES = ("admin", "analyst", "police", "hoster", "partner", "senior")
# A role that includes others: a senior analyst is an analyst who may also change decisions.
INCLUDES: dict[str, frozenset[str]] = {"senior": frozenset({"analyst"})}
ROLES_WITH_PAGES = ("admin", "analyst", "police", "senior")
"""The roles some page is for (analyst, operations, police, monitor): only these get a session
cookie from ``/login``; hosters and partners use the API with their token."""


@dataclass
class CredentialGuard:
    """Brakes on guessing tokens, per client address: after ``lockout.failures`` unknown tokens
    (bearer, cookie or the sign-in form) within ``lockout.seconds`` the address gets 429 for
    every presented token until the window passes; ``logins`` limits sign-in attempts a minute."""

    lockout: Lockout
    logins: RateLimiter


def client_address(request: Request) -> str:
    """The peer address. Behind a reverse proxy every caller shares the proxy's: the limits
    then apply to all of them together (no forwarded header is trusted)."""
    return request.client.host if request.client else "unknown"


def credential_guard(request: Request) -> CredentialGuard | None:
    return getattr(request.app.state, "credential_guard", None)


def too_many(seconds: float, what: str) -> HTTPException:
    return HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, f"too many {what} from this address; "
                         f"try again in {retry_after(seconds)} s", headers={"Retry-After": retry_after(seconds)})


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


def _caller_for(request: Request, store: SqlUnitOfWork, token: str) -> Caller:
    """The account of ``token``, once per request (cached on ``request.state``); 401 for an
    unknown token (counted against the address), 429 while the address is locked out."""
    cached = getattr(request.state, "hotline_caller", None)
    if isinstance(cached, Caller):
        return cached
    guard = credential_guard(request)
    address = client_address(request)
    if guard is not None and (wait := guard.lockout.blocked(address)) is not None:
        raise too_many(wait, "unknown tokens")
    user = store.users.by_token(token)
    if user is None:
        if guard is not None:
            guard.lockout.failed(address)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
    caller = Caller(user.id, user.name, user.role, user.country)
    request.state.hotline_caller = caller
    return caller


def optional_caller(request: Request, store: SqlUnitOfWork = Depends(get_store)) -> Caller | None:
    token = _token(request)
    if token is None:
        return None
    return _caller_for(request, store, token)


async def check_bearer(request: Request) -> None:
    """An app-wide dependency: a request that sends ``Authorization: Bearer`` with an unknown
    token is refused (401) on every route, public ones included, as it is on the routes that
    need a role; a wrong token is a caller's mistake to be told about, not silently ignored.
    (A stale ``hotline_token`` cookie is not refused here: the public form stays usable.)
    Async, with the account looked up in a worker thread only when a token is sent: an
    anonymous request (every public report) costs no thread hop and no database session here."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        token = header[7:].strip()
        if not token:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "empty bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        if any(secrets.compare_digest(token.encode(), t.encode())
               for t in getattr(request.app.state, "service_tokens", ())):
            return  # a token that is no account's (the metrics scraper's): its route checks it
        await run_in_threadpool(_check_account, request, token)


def _check_account(request: Request, token: str) -> None:
    with request.app.state.system.request_sessions()() as session:
        _caller_for(request, SqlUnitOfWork(session), token)


def has_token(request: Request) -> bool:
    """Whether the request presents a token at all (bearer header or cookie)."""
    return _token(request) is not None


def has_role(role: str, roles: tuple[str, ...] | frozenset[str]) -> bool:
    """Whether an account of ``role`` may do what needs one of ``roles``: admins may do
    everything, and a role includes the roles of ``INCLUDES`` (a senior analyst is an analyst).
    The one rule for the API (``require_role``) and the pages (``page_gate``)."""
    return role == "admin" or role in roles or bool(INCLUDES.get(role, frozenset()) & set(roles))


def require_role(*roles: str) -> Callable[..., Caller]:
    def dependency(caller: Caller | None = Depends(optional_caller)) -> Caller:
        if caller is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, "authentication required: send Authorization: Bearer TOKEN",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not has_role(caller.role, roles):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the role {' or '.join(roles)}")
        return caller

    return dependency
