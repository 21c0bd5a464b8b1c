"""Partner hotlines: the directory from ``HOTLINE_PARTNERS_FILE`` and the HTTP gateway that
delivers forwards to them. Tokens are read from the environment variable each entry names."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field

from hotline.kernel.failures import ExternalFailure
from schemas.notices import PartnerForward


class PartnerEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    country: str = Field(min_length=2, max_length=2)
    name: str
    endpoint: str
    token_env: str | None = None


class PartnersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    partners: list[PartnerEntry] = []


@dataclass(frozen=True)
class PartnerDirectory:
    by_country: dict[str, PartnerEntry]

    @classmethod
    def from_file(cls, path: Path | str | None) -> PartnerDirectory:
        if path is None:
            return cls({})
        data = PartnersFile.model_validate(yaml.safe_load(Path(path).read_text()) or {})
        return cls({p.country.upper(): p for p in data.partners})

    def names(self) -> dict[str, str]:
        return {c: p.name for c, p in self.by_country.items()}


class DeliveryFailed(ExternalFailure):
    """The partner did not accept the forward; ``permanent`` says whether retrying can help."""


class PartnerGateway(Protocol):
    def deliver(self, partner: PartnerEntry, forward: PartnerForward) -> int: ...


class HttpPartnerGateway:
    """POSTs the ``forwards.partner`` message as JSON; any 2xx answer is success."""

    def __init__(self, timeout: float = 15.0, transport: httpx.BaseTransport | None = None) -> None:
        self.client = httpx.Client(timeout=timeout, transport=transport)

    def deliver(self, partner: PartnerEntry, forward: PartnerForward) -> int:
        headers = {"Content-Type": "application/json", "Idempotency-Key": forward.forward_id}
        if partner.token_env:
            token = os.environ.get(partner.token_env)
            if not token:
                raise DeliveryFailed(f"the token variable {partner.token_env} for {partner.name} is not set", permanent=True)
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = self.client.post(partner.endpoint, content=forward.to_bytes(), headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{partner.name} unreachable: {exc}") from exc
        if 200 <= response.status_code < 300:
            return response.status_code
        permanent = response.status_code in (400, 401, 403, 404, 422)
        raise DeliveryFailed(f"{partner.name} answered HTTP {response.status_code}", permanent=permanent)
