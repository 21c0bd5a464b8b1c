"""Partner hotlines: the directory from ``HOTLINE_PARTNERS_FILE`` and the HTTP gateway that
talks to them (forwards to ``endpoint``, status updates to ``status_endpoint``, and the
credentials check of ``hotline partners check``). Tokens are read from the environment
variable each entry names, at the moment of each call, so a fixed token needs no restart."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field

from hotline.kernel.failures import ExternalFailure
from hotline.operator_files import load_file, load_text
from schemas.base import Message
from schemas.notices import PartnerForward, PartnerStatusUpdate

# Answers after which retrying the same request cannot help: the request or the credentials
# are wrong (an operator fixes them and retries the forward from the operations page).
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 422})


class PartnerEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    country: str = Field(min_length=2, max_length=2)
    name: str
    endpoint: str
    token_env: str | None = None
    # Where status updates about reports this partner forwarded to us go (optional).
    status_endpoint: str | None = None

    def token(self) -> str | None:
        """The bearer token, or None when no variable is named; raises DeliveryFailed
        (permanent) when the named variable is unset or empty."""
        if not self.token_env:
            return None
        token = os.environ.get(self.token_env)
        if not token:
            raise DeliveryFailed(f"the token variable {self.token_env} for {self.name} is not set", permanent=True)
        return token

    def token_set(self) -> bool:
        return not self.token_env or bool(os.environ.get(self.token_env))


class PartnersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    partners: list[PartnerEntry] = []


@dataclass(frozen=True)
class PartnerDirectory:
    by_country: dict[str, PartnerEntry]

    @classmethod
    def from_file(cls, path: Path | str | None) -> PartnerDirectory:
        """The partners file; ``OperatorFileError`` (one line: file and problem) if it is unusable."""
        if path is None:
            return cls({})
        return load_file(path, PartnersFile, cls.from_model, "HOTLINE_PARTNERS_FILE")

    @classmethod
    def from_text(cls, text: str) -> PartnerDirectory:
        return load_text(text, PartnersFile, cls.from_model, "HOTLINE_PARTNERS_FILE")

    @classmethod
    def from_model(cls, data: PartnersFile) -> PartnerDirectory:
        return cls({p.country.upper(): p for p in data.partners})

    def names(self) -> dict[str, str]:
        return {c: p.name for c, p in self.by_country.items()}

    def get(self, country: str | None) -> PartnerEntry | None:
        return self.by_country.get((country or "").upper())

    def sends_status_updates(self) -> bool:
        """Whether any partner gets status updates (has a ``status_endpoint``): without one,
        no event can produce an update, so the escalate stage need not look anything up."""
        return any(p.status_endpoint for p in self.by_country.values())


class DeliveryFailed(ExternalFailure):
    """The partner did not accept the forward; ``permanent`` says whether retrying can help."""


CheckOutcome = Literal["ok", "credentials_refused", "unreachable", "not_configured"]


@dataclass(frozen=True)
class CheckResult:
    """What ``hotline partners check`` found about one endpoint of one partner."""

    country: str
    name: str
    endpoint: str
    outcome: CheckOutcome
    detail: str

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class StatusGateway(Protocol):
    def send_status(self, partner: PartnerEntry, update: PartnerStatusUpdate) -> int: ...


class PartnerGateway(StatusGateway, Protocol):
    """Forwards to ``endpoint``, status updates to ``status_endpoint``."""

    def deliver(self, partner: PartnerEntry, forward: PartnerForward) -> int: ...


class HttpPartnerGateway:
    """POSTs the ``forwards.partner`` message (or a ``partners.status`` update) as JSON with
    ``Idempotency-Key`` = its id and the partner's bearer token; any 2xx answer is success."""

    def __init__(self, timeout: float = 15.0, transport: httpx.BaseTransport | None = None) -> None:
        self.client = httpx.Client(timeout=timeout, transport=transport)

    def deliver(self, partner: PartnerEntry, forward: PartnerForward) -> int:
        return self._post(partner, partner.endpoint, forward, forward.forward_id)

    def send_status(self, partner: PartnerEntry, update: PartnerStatusUpdate) -> int:
        if not partner.status_endpoint:
            raise DeliveryFailed(f"{partner.name} has no status_endpoint in the partners file", permanent=True)
        return self._post(partner, partner.status_endpoint, update, update.update_id)

    def _post(self, partner: PartnerEntry, url: str, message: Message, key: str) -> int:
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        token = partner.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = self.client.post(url, content=message.to_bytes(), headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{partner.name} unreachable: {exc}") from exc
        if 200 <= response.status_code < 300:
            return response.status_code
        permanent = response.status_code in PERMANENT_STATUSES
        raise DeliveryFailed(f"{partner.name} answered HTTP {response.status_code}", permanent=permanent)

    def check(self, partner: PartnerEntry, url: str | None = None) -> CheckResult:
        """Reachability and credentials of ``url`` (default the forward endpoint) without
        sending a report: an authenticated ``OPTIONS``. 401/403 = credentials refused; no
        answer, a timeout or a 5xx = unreachable; any other answer (2xx, 404, 405, ...) = ok,
        the server is there and took the token."""
        url = url or partner.endpoint
        row = (partner.country, partner.name, url)
        try:
            token = partner.token()
        except DeliveryFailed as exc:
            return CheckResult(*row, "not_configured", exc.reason)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            response = self.client.options(url, headers=headers)
        except httpx.HTTPError as exc:
            return CheckResult(*row, "unreachable", f"{type(exc).__name__}: {exc}")
        code = response.status_code
        if code in (401, 403):
            return CheckResult(*row, "credentials_refused", f"HTTP {code}")
        if code >= 500:
            return CheckResult(*row, "unreachable", f"HTTP {code}")
        return CheckResult(*row, "ok", f"HTTP {code}")
