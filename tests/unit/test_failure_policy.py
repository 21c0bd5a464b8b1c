"""The one failure policy (``hotline.kernel.failures``) as a table: exception sequences in,
decisions out. Both runtimes call it (tests/unit/test_parking.py shows each does)."""

from __future__ import annotations

import smtplib

import httpx
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from hotline.kernel.failures import (
    ExternalFailure,
    Failure,
    FailureHistory,
    FailurePolicy,
    Park,
    Retry,
    classify,
)
from services.escalate.partners import DeliveryFailed

O, I, B = Failure.OUTAGE, Failure.INTEGRITY, Failure.BUG  # noqa: E741 - a table reads best in letters
POLICY = FailurePolicy(max_failures=5, max_integrity_failures=3, first_delay_seconds=0.5, max_delay_seconds=30)


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        pytest.param([O] * 1, Retry, id="outage once"),
        pytest.param([O] * 500, Retry, id="outage forever"),
        pytest.param([B] * 4, Retry, id="bug four times"),
        pytest.param([B] * 5, Park, id="bug five times"),
        pytest.param([O] * 5 + [B], Retry, id="first bug after outages"),
        pytest.param([O] * 5 + [B] * 5, Park, id="bug after outages"),
        pytest.param([O, B, O, B, O, B, O, B, O, B], Park, id="bugs between outages"),
        pytest.param([B] * 4 + [O], Retry, id="outage after bugs"),
        pytest.param([B] * 4 + [O] * 50, Retry, id="long outage after bugs"),
        pytest.param([B] * 4 + [O] * 3 + [B], Park, id="bug after outage after bugs"),
        pytest.param([I], Retry, id="integrity once: a race, retried"),
        pytest.param([I, I], Retry, id="integrity twice"),
        pytest.param([I, I, I], Park, id="integrity violation that always happens"),
        pytest.param([I, O, I, O, I], Park, id="integrity between outages"),
        pytest.param([I, I, B, B, B], Park, id="integrity and bugs count together"),
    ],
)
def test_decisions(history: list[Failure], expected: type) -> None:
    assert isinstance(POLICY.decide(history), expected)


def test_back_off_doubles_and_is_capped() -> None:
    delays = [POLICY.decide([O] * n) for n in (1, 2, 3, 4, 20)]
    assert [d.delay_seconds for d in delays if isinstance(d, Retry)] == [0.5, 1.0, 2.0, 4.0, 30.0]


def test_park_says_how_often_it_failed() -> None:
    decision = POLICY.decide([O] * 5 + [B] * 5)
    assert isinstance(decision, Park) and decision.reason == "failed 5 times"


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionRefusedError(), O),
        (TimeoutError(), O),
        (smtplib.SMTPServerDisconnected(), O),
        (httpx.ConnectTimeout("slow"), O),
        (OperationalError("SELECT 1", {}, Exception("database is locked")), O),
        (DeliveryFailed("partner unreachable"), O),
        (DeliveryFailed("partner said 403", permanent=True), B),
        (ExternalFailure("mail server refused for good", permanent=True), B),
        (IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed")), I),
        (KeyError("x"), B),
        (ValueError("odd page"), B),
    ],
)
def test_what_each_exception_counts_as(exc: BaseException, kind: Failure) -> None:
    assert classify(exc) is kind


def test_history_remembers_the_decision_until_reset() -> None:
    history = FailureHistory(POLICY)
    for _ in range(5):
        history.record(OSError("down"))
    for _ in range(4):
        assert isinstance(history.record(ValueError("bug")), Retry)
    assert isinstance(history.record(ValueError("bug")), Park)
    assert isinstance(history.decision, Park) and len(history) == 10
    history.reset()
    assert history.decision is None and len(history) == 0
