"""The one failure policy: what a runtime does when processing a message raised.

A pure function of the message's failure history, called by both runtimes, so they
cannot disagree (they did: one decided on the *first* errors it saw, the other on the
current one). The rules:

- an **outage** (network, SMTP, database unavailable, broker) says nothing about the
  message: it is retried with capped exponential back-off for as long as it lasts;
- an **integrity violation** (unique or foreign-key constraint) is usually a race with
  another worker that the retry resolves by seeing the winner's row; one that keeps
  happening will always happen, so after ``max_integrity_failures`` the message is parked;
- anything else (**a bug**, or input that trips one) is retried ``max_failures`` times in
  all, whatever outages came before or between, then parked: published to
  ``reports.rejected`` and its item put before an analyst (``hotline.kernel.parking``),
  so one bad message never stops a stage.
"""

from __future__ import annotations

import smtplib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum


class Failure(Enum):
    OUTAGE = "outage"
    INTEGRITY = "integrity"
    BUG = "bug"


class ExternalFailure(Exception):
    """Base for adapters' errors about something outside the message (a mail server, a
    partner's endpoint). An outage unless ``permanent``: a refusal that retrying cannot
    change (a 550, a 403) counts like a bug, so the message is parked, not retried forever."""

    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


@dataclass(frozen=True)
class Retry:
    delay_seconds: float


@dataclass(frozen=True)
class Park:
    reason: str


Decision = Retry | Park


def _outage_types() -> tuple[type[BaseException], ...]:
    import httpx
    from sqlalchemy import exc as sa_exc

    types: tuple[type[BaseException], ...] = (
        OSError,  # ConnectionError, TimeoutError, socket errors
        smtplib.SMTPException,
        httpx.TransportError,
        sa_exc.OperationalError,  # database down or busy ("database is locked")
        sa_exc.InterfaceError,
    )
    try:
        from aiokafka.errors import KafkaError

        types = (*types, KafkaError)
    except ImportError:  # pragma: no cover - aiokafka is a dependency
        pass
    return types


_OUTAGES: tuple[type[BaseException], ...] | None = None


def classify(exc: BaseException) -> Failure:
    """Which kind of failure ``exc`` is (see the module docstring)."""
    global _OUTAGES
    from sqlalchemy.exc import IntegrityError

    if isinstance(exc, IntegrityError):
        return Failure.INTEGRITY
    if isinstance(exc, ExternalFailure):
        return Failure.BUG if exc.permanent else Failure.OUTAGE
    if _OUTAGES is None:
        _OUTAGES = _outage_types()
    if isinstance(exc, _OUTAGES):
        return Failure.OUTAGE
    return Failure.BUG


@dataclass(frozen=True)
class FailurePolicy:
    max_failures: int = 5
    max_integrity_failures: int = 3
    first_delay_seconds: float = 0.5
    max_delay_seconds: float = 30.0

    def decide(self, history: Sequence[Failure]) -> Decision:
        """``history``: this message's failures so far, oldest first, the latest included."""
        if not history:
            raise ValueError("decide() needs at least the failure that just happened")
        latest = history[-1]
        not_outages = sum(1 for f in history if f is not Failure.OUTAGE)
        integrity = sum(1 for f in history if f is Failure.INTEGRITY)
        if latest is Failure.INTEGRITY and integrity >= self.max_integrity_failures:
            return Park(f"a database constraint was violated {integrity} times")
        if latest is not Failure.OUTAGE and not_outages >= self.max_failures:
            return Park(f"failed {not_outages} times")
        # Back off by the number of failures so far: a long outage waits longer and longer
        # (capped); the history starts afresh with the next message.
        return Retry(min(self.first_delay_seconds * 2 ** (len(history) - 1), self.max_delay_seconds))


class FailureHistory:
    """The failures of the message a runtime is working on; reset when it moves on."""

    def __init__(self, policy: FailurePolicy) -> None:
        self.policy = policy
        self.failures: list[Failure] = []
        self.last_error: BaseException | None = None
        self.decision: Decision | None = None

    def record(self, exc: BaseException) -> Decision:
        self.failures.append(classify(exc))
        self.last_error = exc
        self.decision = self.policy.decide(self.failures)
        return self.decision

    def reset(self) -> None:
        self.failures.clear()
        self.last_error = None
        self.decision = None

    def __len__(self) -> int:
        return len(self.failures)
