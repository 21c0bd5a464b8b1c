"""Who may call what, as a table: every route of the app, enumerated from its router (so a
new route that is not in the table fails this test until someone decides who may call it),
called anonymously and with a token of every role, against the table.

The verdicts: a caller the route is not for is refused (anonymous: 401, or a page's redirect
to ``/login``; a signed-in role the route is not for: 403); a caller it is for gets past the
gate (anything but 401/403/that redirect, and never a 5xx: with placeholder ids and an empty
body that is mostly 404 or 422). Admins may call everything (``require_role``)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from starlette.routing import Mount, Route

from hotline.web.auth import ROLES
from tests.integration.webkit import WebApp, web_app

PUBLIC = frozenset({"*"})
POLICE, HOSTER, PARTNER, ADMIN = (frozenset({r}) for r in ("police", "hoster", "partner", "admin"))
ANALYST = frozenset({"analyst", "senior"})  # a senior analyst is an analyst who may also change decisions
SENIOR = frozenset({"senior"})

TABLE: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/init.js"): PUBLIC,
    ("GET", "/docs/assets/{path}"): PUBLIC,
    ("GET", "/metrics"): ADMIN,
    # intake and status
    ("GET", "/report"): PUBLIC,
    ("GET", "/report/form.css"): PUBLIC,
    ("POST", "/report"): PUBLIC,
    ("POST", "/api/v1/reports"): PUBLIC,
    ("GET", "/api/v1/reports/{report_id}"): PUBLIC,
    ("POST", "/api/v1/partner/reports"): PARTNER,
    # sign-in
    ("GET", "/login"): PUBLIC,
    ("POST", "/login"): PUBLIC,
    ("GET", "/logout"): PUBLIC,
    ("POST", "/logout"): PUBLIC,
    # analysts
    ("GET", "/api/v1/items"): ANALYST,
    ("POST", "/api/v1/items/{item_id}/assessment"): ANALYST,
    ("GET", "/analyst"): ANALYST,
    ("GET", "/analyst/items/{item_id}"): ANALYST,
    ("GET", "/analyst/items/{item_id}/images/{n}"): ANALYST,
    ("POST", "/analyst/items/{item_id}/decision"): ANALYST,
    ("GET", "/api/v1/assessment/questions"): ANALYST,
    ("GET", "/analyst/static/analyst.js"): PUBLIC,  # the pages' own script, no data in it
    ("POST", "/analyst/next"): ANALYST,
    ("POST", "/analyst/break"): ANALYST,
    ("POST", "/analyst/items/{item_id}/lease"): ANALYST,
    ("POST", "/analyst/items/{item_id}/second-opinion"): ANALYST,
    ("POST", "/analyst/items/{item_id}/change"): SENIOR,
    ("POST", "/api/v1/items/{item_id}/assessment/change"): SENIOR,
    # HashCheck
    ("POST", "/api/v1/hashcheck"): HOSTER,
    ("GET", "/api/v1/hashcheck/stats"): HOSTER,
    ("GET", "/monitor/hashcheck"): ADMIN,
    # monitor and statistics
    ("GET", "/api/v1/monitor/hosters"): PUBLIC,
    ("GET", "/api/v1/monitor/hosters.csv"): PUBLIC,
    ("GET", "/monitor"): PUBLIC,
    ("GET", "/api/v1/monitor/open"): ANALYST,
    ("GET", "/monitor/internal"): ANALYST,
    ("GET", "/api/v1/stats/{year}"): PUBLIC,
    ("GET", "/stats/{year}"): PUBLIC,
    # operations: analysts look, admins act
    ("GET", "/api/v1/operations/notices"): ANALYST,
    ("POST", "/api/v1/operations/notices/{notice_id}/mark-delivered"): ADMIN,
    ("POST", "/api/v1/operations/notices/{notice_id}/resend"): ADMIN,
    ("POST", "/api/v1/operations/notices/{notice_id}/send-elsewhere"): ADMIN,
    ("GET", "/operations"): ANALYST,
    ("POST", "/operations/notices/{notice_id}/{action}"): ADMIN,
    ("GET", "/api/v1/operations/deliveries"): ANALYST,
    ("GET", "/api/v1/operations/rejections"): ANALYST,
    ("POST", "/api/v1/operations/rejections/{rejection_id}/{action}"): ADMIN,
    ("POST", "/operations/rejections/{rejection_id}/{action}"): ADMIN,
    ("POST", "/api/v1/operations/{kind}s/{delivery_id}/retry"): ADMIN,
    ("POST", "/operations/deliveries/{kind}/{delivery_id}/retry"): ADMIN,
    # police
    ("GET", "/api/v1/escalations"): POLICE,
    ("POST", "/api/v1/escalations/{escalation_id}/received"): POLICE,
    ("POST", "/api/v1/escalations/{escalation_id}/hold"): POLICE,
    ("POST", "/api/v1/escalations/{escalation_id}/release"): POLICE,
    ("GET", "/police"): POLICE,
    ("POST", "/police/escalations/{escalation_id}/{action}"): POLICE,
    # partner hotlines
    ("GET", "/api/v1/partner/forwards"): PARTNER,
    ("POST", "/api/v1/partner/forwards/{forward_id}/status"): PARTNER,
    ("GET", "/api/v1/partner/reports/{report_id}"): PARTNER,
}

PLACEHOLDERS = {"year": "2026", "kind": "forward", "n": "0", "path": "none.js"}


def app_routes(app: FastAPI) -> set[tuple[str, str]]:
    """(method, path) of every route the app answers, included routers and mounts too."""
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        if hasattr(route, "effective_route_contexts"):  # an included router (FastAPI >= 0.16x)
            for context in route.effective_route_contexts():
                found.update((m, context.path) for m in context.methods - {"HEAD"})
        elif isinstance(route, Mount):
            found.add(("GET", route.path + "/{path}"))
        elif isinstance(route, Route):
            found.update((m, route.path) for m in (route.methods or {"GET"}) - {"HEAD"})
        else:
            raise AssertionError(f"a route of a kind this test cannot enumerate: {route!r}")
    return found


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebApp]:
    with web_app(tmp_path_factory.mktemp("access"), auth_max_failures=0, login_per_minute=0) as app:
        yield app


def test_every_route_is_in_the_table(w: WebApp) -> None:
    routes = app_routes(w.app)
    assert len(routes) > 40
    missing = sorted(routes - set(TABLE))
    assert not missing, f"routes nobody decided the access of (add them to TABLE): {missing}"
    stale = sorted(set(TABLE) - routes)
    assert not stale, f"TABLE lists routes the app no longer has: {stale}"


def _url(path: str) -> str:
    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "action":
            return "release" if path.startswith("/police") else "dismiss" if "rejections" in path else "resend"
        return PLACEHOLDERS.get(name, "1")

    return re.sub(r"\{([^}]+)\}", fill, path)


@pytest.mark.parametrize("caller", [None, *ROLES])
@pytest.mark.parametrize(("method", "path"), sorted(TABLE))
def test_access(w: WebApp, method: str, path: str, caller: str | None) -> None:
    allowed = TABLE[(method, path)]
    headers = {**w.auth(caller), "Origin": "http://testserver"}  # pages' CSRF check: same origin
    r = w.client.request(method, _url(path), headers=headers, json={} if method == "POST" else None,
                         follow_redirects=False)
    to_login = r.status_code in (302, 303, 307) and r.headers.get("location", "").startswith("/login")
    assert r.status_code < 500, f"{method} {path} as {caller}: {r.status_code} {r.text[:200]}"
    if allowed is PUBLIC:
        ok = r.status_code != 403 and (r.status_code != 401 or path == "/login")
        assert ok, f"public {method} {path} refused {caller}: {r.status_code}"
    elif caller is None:
        assert r.status_code == 401 or to_login, f"{method} {path} let an anonymous caller in: {r.status_code}"
    elif caller in allowed or caller == "admin":
        assert r.status_code not in (401, 403) and not to_login, \
            f"{method} {path} refused {caller}: {r.status_code} {r.text[:200]}"
    else:
        assert r.status_code == 403, f"{method} {path} let {caller} in: {r.status_code} {r.text[:200]}"
