"""Sending e-mail. ``Mailer`` is the seam; ``SmtpMailer`` is the real adapter, ``RecordingMailer``
the fake that unit tests read."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from typing import Protocol


class NotDelivered(Exception):
    """Placeholder (replaced by the mailer branch)."""


class DeliveryUnknown(Exception):
    """Placeholder (replaced by the mailer branch)."""


class Mailer(Protocol):
    def send(self, message: EmailMessage) -> None: ...


class SmtpMailer:
    def __init__(
        self,
        host: str,
        port: int,
        user: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self.host, self.port, self.user, self.password = host, port, user, password
        self.starttls, self.timeout = starttls, timeout

    def send(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.user and self.password:
                smtp.login(self.user, self.password)
            smtp.send_message(message)


class RecordingMailer:
    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []

    def send(self, message: EmailMessage) -> None:
        self.sent.append(message)
