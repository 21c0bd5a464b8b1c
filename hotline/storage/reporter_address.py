"""How a reporter's e-mail address is kept: sealed, never in clear.

A reporter who leaves an address wants to hear back, so the hotline must be able to read it
again; nobody else should, not a database backup, not someone who reads the bus. So the
address is encrypted at the edge (the web form, the API, the CSV import), before it is put in
a message or a row, with AES-256-GCM under the operator's key ``HOTLINE_REPORTER_KEY`` (32
random bytes, URL-safe base64; see the README). The sealed form is ``v1:`` + URL-safe base64
of nonce, ciphertext and tag, and fits the ``reports.reporter_email`` column (320 characters)
for addresses of up to :data:`MAX_ADDRESS_BYTES` bytes, so no schema change was needed.

Without a key the address cannot be kept safely and is not kept at all: the public form then
does not offer the field (nobody is promised a reply that cannot come), and the API accepts
and drops it. The storage layer keeps only sealed values (:func:`is_sealed`): a clear address
that reaches it by some other path is dropped there, so the database never holds one.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "v1:"
MAX_ADDRESS_BYTES = 200
"""Longest address (UTF-8 bytes) whose sealed form fits the 320-character column:
3 + ceil((200 + 12 + 16) * 4 / 3) = 307. Real addresses are far shorter."""
_NONCE = 12
_AAD = b"hotline reporter address v1"


class ReporterKeyInvalid(ValueError):
    """``HOTLINE_REPORTER_KEY`` is not 32 bytes of URL-safe base64."""


def new_key() -> str:
    """A fresh key for ``HOTLINE_REPORTER_KEY``."""
    return base64.urlsafe_b64encode(AESGCM.generate_key(bit_length=256)).decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_sealed(value: str | None) -> bool:
    return value is not None and value.startswith(PREFIX)


class ReporterSeal:
    """Seals and opens reporter addresses with one key."""

    def __init__(self, key: str) -> None:
        try:
            raw = _b64decode(key.strip())
        except (binascii.Error, ValueError) as exc:
            raise ReporterKeyInvalid("HOTLINE_REPORTER_KEY is not URL-safe base64") from exc
        if len(raw) != 32:
            raise ReporterKeyInvalid(f"HOTLINE_REPORTER_KEY must be 32 bytes, not {len(raw)}")
        self._aead = AESGCM(raw)

    def seal(self, address: str) -> str:
        data = address.strip().encode("utf-8")
        if len(data) > MAX_ADDRESS_BYTES:
            raise ValueError(f"an e-mail address of more than {MAX_ADDRESS_BYTES} bytes cannot be kept")
        nonce = os.urandom(_NONCE)
        token = base64.urlsafe_b64encode(nonce + self._aead.encrypt(nonce, data, _AAD)).decode("ascii")
        return PREFIX + token.rstrip("=")

    def open(self, sealed: str) -> str:
        """The address in clear, for the hotline's own reply; ``ValueError`` if it was sealed
        under another key or tampered with."""
        if not is_sealed(sealed):
            raise ValueError("not a sealed reporter address")
        raw = _b64decode(sealed.removeprefix(PREFIX))
        try:
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], _AAD).decode("utf-8")
        except InvalidTag as exc:
            raise ValueError("the reporter address was sealed under another key, or altered") from exc


def keep_address(seal: ReporterSeal | None, address: str | None) -> str | None:
    """What may be stored for ``address``: its sealed form, itself if already sealed, or
    nothing (no key, or an address too long to keep)."""
    if not address or not address.strip():
        return None
    if is_sealed(address):
        return address
    if seal is None:
        return None
    try:
        return seal.seal(address)
    except ValueError:
        return None
