"""HashCheck answers known / not known only, except to accounts the operator trusts, and limits
every account's requests a minute and hashes a day (issue 12, defect 3).

The attack these stop: a hoster holding one near miss of a bank PDQ sends the near miss and
its 256 one-bit flips in one request; with distances in the answer, keeping each flip that
lowers the distance gives the bank's exact hash."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotline.storage.unit_of_work import SqlUnitOfWork
from tests.integration.webkit import WebApp, web_app


def _flip(value: str, bit: int) -> str:
    return f"{int(value, 16) ^ (1 << bit):064x}"


def _balanced_pdq(seed: int) -> str:
    """A random 256-bit hash with about half its bits set, as a picture's PDQ is."""
    import random

    rng = random.Random(seed)
    bits = [1] * 128 + [0] * 128
    rng.shuffle(bits)
    return f"{int(''.join(map(str, bits)), 2):064x}"


BANK_PDQ = _balanced_pdq(7)
NEAR_MISS = BANK_PDQ
for _bit in (3, 40, 77, 101, 150, 199, 230, 250):  # 8 bits away: inside the radius of 31
    NEAR_MISS = _flip(NEAR_MISS, _bit)


def _bank(w: WebApp) -> None:
    with w.system.sessions() as session:
        store = SqlUnitOfWork(session)
        store.bank.add(category="baseline", source="test", pdq=BANK_PDQ, md5=os.urandom(16).hex())
        store.commit()
    w.system.bank.refresh(force=True)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[WebApp]:
    with web_app(tmp_path, hashcheck_trusted="test-admin") as w:
        _bank(w)
        yield w


def _bit_flip_attack(w: WebApp, role: str) -> tuple[str, list[dict[str, Any]]]:
    probes = [NEAR_MISS] + [_flip(NEAR_MISS, b) for b in range(256)]
    r = w.client.post("/api/v1/hashcheck", headers=w.auth(role),
                      json={"hashes": [{"type": "pdq", "value": v} for v in probes]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    recovered = int(NEAR_MISS, 16)
    base = results[0].get("distance")
    for bit, result in enumerate(results[1:]):
        if base is not None and result.get("distance") is not None and result["distance"] < base:
            recovered ^= 1 << bit
    return f"{recovered:064x}", results


def test_bit_flip_attack_recovers_nothing_without_distances(app: WebApp) -> None:
    recovered, results = _bit_flip_attack(app, "hoster")
    assert recovered == NEAR_MISS != BANK_PDQ
    assert all(set(r) == {"type", "value", "known"} for r in results)
    # Every probe answers the same: known. Nothing tells one flip from another.
    assert {r["known"] for r in results} == {True}
    assert "distance" not in app.client.post(
        "/api/v1/hashcheck", headers=app.auth("hoster"),
        json={"hashes": [{"type": "pdq", "value": BANK_PDQ}]}).json()["results"][0]


def test_a_trusted_account_gets_distances_and_so_could_run_the_attack(app: WebApp) -> None:
    # The setting is the operator's informed choice: with distances the attack works.
    recovered, results = _bit_flip_attack(app, "admin")
    assert results[0]["distance"] == 8
    assert recovered == BANK_PDQ


def test_requests_a_minute_per_account_get_429_with_retry_after(tmp_path: Path) -> None:
    with web_app(tmp_path, hashcheck_requests_per_minute=5) as w:
        _bank(w)
        body = {"hashes": [{"type": "md5", "value": os.urandom(16).hex()}]}
        codes = [w.client.post("/api/v1/hashcheck", headers=w.auth("hoster"), json=body).status_code
                 for _ in range(8)]
        assert codes == [200] * 5 + [429] * 3
        r = w.client.post("/api/v1/hashcheck", headers=w.auth("hoster"), json=body)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert "requests a minute" in r.json()["detail"][0]["reason"]
        # Per account: another one is not held up by the first.
        assert w.client.post("/api/v1/hashcheck", headers=w.auth("admin"), json=body).status_code == 200


def test_daily_budget_of_hashes_per_account(tmp_path: Path) -> None:
    with web_app(tmp_path, hashcheck_daily_hashes=1000) as w:
        _bank(w)

        def batch(n: int) -> dict[str, Any]:
            return {"hashes": [{"type": "md5", "value": os.urandom(16).hex()} for _ in range(n)]}

        assert w.client.post("/api/v1/hashcheck", headers=w.auth("hoster"), json=batch(600)).status_code == 200
        over = w.client.post("/api/v1/hashcheck", headers=w.auth("hoster"), json=batch(600))
        assert over.status_code == 429
        assert 1 <= int(over.headers["Retry-After"]) <= 86400
        assert "400 left today" in over.json()["detail"][0]["reason"]
        # A refused request spends nothing: the rest of the budget is still there.
        assert w.client.post("/api/v1/hashcheck", headers=w.auth("hoster"), json=batch(400)).status_code == 200
        assert w.client.post("/api/v1/hashcheck", headers=w.auth("hoster"), json=batch(1)).status_code == 429
