"""Sending e-mail. ``Mailer`` is the seam; ``SmtpMailer`` is the real adapter, ``RecordingMailer``
the fake that unit tests read.

A send ends in one of three ways, and the caller must tell them apart because a notice is
never sent twice: it returned (the server answered 2xx to the end of the data), it raised
``NotDelivered`` (the server cannot have the message, so sending again is safe), or it raised
``DeliveryUnknown`` (the server may have the message, so it must never be sent again).
"""

from __future__ import annotations

import copy
import email.utils
import io
import re
import smtplib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.policy import EmailPolicy
from typing import Protocol

from hotline.kernel.failures import ExternalFailure


class NotDelivered(ExternalFailure):
    """The SMTP server did not take the message, so trying again cannot produce a duplicate.

    Raised when the connection was refused or failed, when the greeting, EHLO/HELO,
    STARTTLS, AUTH, MAIL, RCPT or the DATA command itself was refused, when the connection
    dropped or timed out before the end-of-data terminator (``<CRLF>.<CRLF>``) had been
    written, and when the server answered the end of the data with an explicit 4xx or 5xx
    reply. In all of these the server has no complete message it said it would deliver.

    ``permanent`` is True when sending the same message to the same server again cannot
    help: a 5xx reply (e.g. 550 recipient refused, 535 bad credentials), a missing server
    extension the send needs (STARTTLS, AUTH, SMTPUTF8), or a message that cannot be sent
    at all (no sender or recipient). It is False for 4xx replies and for network failures,
    which are worth retrying. ``code`` is the server's reply code, or None when there was
    no (well-formed) reply.
    """

    def __init__(self, reason: str, *, permanent: bool, code: int | None = None) -> None:
        # An ExternalFailure: a temporary one is an outage to the failure policy (retried for
        # as long as it lasts), a permanent one is parked after a few attempts.
        super().__init__(reason, permanent=permanent)
        self.code = code

    def __str__(self) -> str:
        kind = "permanent" if self.permanent else "temporary"
        code = f", reply {self.code}" if self.code is not None else ""
        return f"{self.reason} ({kind}{code})"


class DeliveryUnknown(Exception):
    """The whole message, including the terminating ``<CRLF>.<CRLF>``, was written, but the
    server's final reply never came (timeout, disconnect, reset, or a reply that is not an
    SMTP reply).

    The server may well have taken responsibility for the message and be delivering it, so it
    must never be sent again: an operator checks the server's log by its Message-ID.
    """


class Mailer(Protocol):
    def send(self, message: EmailMessage) -> None:
        """Send ``message`` to the recipients in its To/Cc/Bcc headers.

        Returns only when the server accepted the message (2xx to the end of the data).
        Raises only ``NotDelivered`` (the server does not have it; a retry is safe, and
        ``permanent`` says whether one can help) or ``DeliveryUnknown`` (the server may have
        it; never resend). Any other failure is reported as one of these two.
        """
        ...


def _envelope(message: EmailMessage) -> tuple[str, list[str]]:
    """Sender and recipients as ``smtplib.SMTP.send_message`` takes them from the headers:
    Sender (else From), and To + Bcc + Cc; the ``Resent-`` ones for a resent message."""
    resent = message.get_all("Resent-Date")
    if resent is None:
        prefix = ""
    elif len(resent) == 1:
        prefix = "Resent-"
    else:
        raise ValueError("message has more than one 'Resent-' header block")
    sender_field = message[prefix + "Sender"] if (prefix + "Sender") in message else message[prefix + "From"]
    from_addr = email.utils.getaddresses([str(sender_field)])[0][1] if sender_field is not None else ""
    fields = [str(f) for f in (message[prefix + "To"], message[prefix + "Bcc"], message[prefix + "Cc"]) if f is not None]
    to_addrs = [a for _, a in email.utils.getaddresses(fields) if a]
    return from_addr, to_addrs


_EOLS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")


def data_block(flat: bytes) -> bytes:
    """The bytes to write after the server's 354: every line ending made CRLF (so no bare CR
    or LF can end the data early on a lenient server), leading dots doubled, and the
    ``<CRLF>.<CRLF>`` terminator appended -- ``smtplib.quotedata`` and ``SMTP.data`` on bytes."""
    quoted = _LEADING_DOT.sub(b"..", _EOLS.sub(b"\r\n", flat))
    if not quoted.endswith(b"\r\n"):
        quoted += b"\r\n"
    return quoted + b".\r\n"


def _flatten(message: EmailMessage, international: bool) -> bytes:
    """The message as ``SMTP.send_message`` serialises it: a copy without Bcc headers, through
    ``BytesGenerator`` with CRLF line ends (UTF-8 headers for international addresses)."""
    msg_copy = copy.copy(message)
    del msg_copy["Bcc"]
    del msg_copy["Resent-Bcc"]
    with io.BytesIO() as out:
        policy = message.policy
        if international:
            if not isinstance(policy, EmailPolicy):
                raise ValueError("an international address needs a message with an EmailPolicy")
            policy = policy.clone(utf8=True)
        BytesGenerator(out, policy=policy).flatten(msg_copy, linesep="\r\n")
        return out.getvalue()


def _reply_code(exc: smtplib.SMTPResponseException) -> int | None:
    # smtplib makes up a reply of its own (500, str) for an over-long reply line; only the
    # server's own replies (bytes) carry a code worth reporting.
    code = exc.smtp_code
    if isinstance(exc.smtp_error, bytes) and isinstance(code, int) and 100 <= code <= 599:
        return code
    return None


def _refusal(step: str, code: int, text: bytes | str) -> NotDelivered:
    detail = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    if 400 <= code <= 599:
        return NotDelivered(f"{step} refused: {code} {detail}".rstrip(), permanent=code >= 500, code=code)
    return NotDelivered(f"{step}: unexpected reply {code} {detail}".rstrip(), permanent=False)


@dataclass
class _Connection:
    """An open SMTP connection with what the pool needs to judge it: when it last finished
    a message, and how many it has carried."""

    smtp: smtplib.SMTP
    idle_since: float = 0.0
    uses: int = 0


class _Stale(Exception):
    """A reused connection turned out to be closed by the server before it saw the message
    (its idle timeout): nothing was sent, so the send goes on over a fresh connection."""


def _shows_dead(exc: BaseException) -> bool:
    """Whether a failure before the server's 354 means the connection was already closed by
    the server: a disconnect (EOF, reset, broken pipe) or a 421 ("closing"). A timeout is not
    one: a server that stops answering is not a closed idle connection, and waiting a second
    time would double the time the send may take."""
    if isinstance(exc, NotDelivered):
        return exc.code == 421
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return not isinstance(exc.__context__, TimeoutError)
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code == 421
    return isinstance(exc, (ConnectionError, EOFError))


class SmtpMailer:
    """Sends over SMTP with ``smtplib``, one step at a time, so that it always knows whether
    the end-of-data terminator was written when something goes wrong (see ``Mailer.send``).

    ``timeout`` bounds every single network operation (connect, each reply, each write), not
    the conversation as a whole.

    Connections are kept open and reused, because opening one (greeting, EHLO, [STARTTLS,
    EHLO, AUTH]) and QUIT cost about half of the round trips of a send. Only a connection
    whose last message was accepted (2xx to the end of data) goes back to the pool; after
    any failure or ``DeliveryUnknown`` the connection's state is uncertain and it is closed.
    A reused connection the server has meanwhile closed (it fails with a disconnect or a 421
    before the server's 354 to DATA, so the server saw no message) is replaced by a fresh one
    within the same send, once; failures at or after the 354 are never retried here.

    A connection idle for ``idle_seconds`` or longer (kept below servers' idle timeouts; 0
    turns reuse off) or that carried ``max_uses`` messages (servers limit messages per
    connection) is closed instead of reused; at most ``max_idle`` idle connections are kept.
    ``send`` may be called from several threads at once: each connection serves one send at
    a time. ``close`` hangs up the idle connections; sends after it still work, each on a
    connection of its own. ``clock`` (monotonic seconds) is injectable for tests.
    """

    def __init__(
        self,
        host: str,
        port: int,
        user: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout: float = 30.0,
        *,
        idle_seconds: float = 30.0,
        max_uses: int = 100,
        max_idle: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host, self.port, self.user, self.password = host, port, user, password
        self.starttls, self.timeout = starttls, timeout
        self.idle_seconds, self.max_uses, self.max_idle, self.clock = idle_seconds, max_uses, max_idle, clock
        self._lock = threading.Lock()
        self._idle: list[_Connection] = []  # most recently used last
        self._closed = False

    def send(self, message: EmailMessage) -> None:
        try:
            from_addr, to_addrs = _envelope(message)
            if not from_addr:
                raise ValueError("the message has no sender (From or Sender)")
            if not to_addrs:
                raise ValueError("the message has no recipient (To, Cc or Bcc)")
            international = not "".join([from_addr, *to_addrs]).isascii()
            flat = _flatten(message, international)
        except Exception as exc:  # noqa: BLE001 - nothing was sent: report it as undeliverable
            raise NotDelivered(f"the message cannot be sent: {exc}", permanent=True) from exc
        block = data_block(flat)

        reused = self._take()
        if reused is not None:
            try:
                self._deliver(reused, from_addr, to_addrs, international, block, fresh=False)
                return
            except _Stale:
                pass  # the server had closed it before the message: go on over a fresh connection
        self._deliver(self._connect(), from_addr, to_addrs, international, block, fresh=True)

    def close(self) -> None:
        """Hang up the idle connections (QUIT); connections in use are hung up when their
        send ends. Sends after this still work, without keeping their connections."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            self._hang_up(conn.smtp, polite=True)

    def _take(self) -> _Connection | None:
        """The most recently used idle connection that is still young enough; the expired
        ones are hung up (outside the lock: QUIT is a round trip)."""
        now = self.clock()
        with self._lock:
            young = [c for c in self._idle if now - c.idle_since < self.idle_seconds]
            expired = [c for c in self._idle if now - c.idle_since >= self.idle_seconds]
            taken = young.pop() if young else None
            self._idle = young
        for conn in expired:
            self._hang_up(conn.smtp, polite=True)
        return taken

    def _put_back(self, conn: _Connection) -> None:
        """After an accepted message: keep the connection for the next send, unless it has
        carried enough messages, reuse is off, or the pool is full or closed."""
        conn.uses += 1
        conn.idle_since = self.clock()
        if conn.uses < self.max_uses and self.idle_seconds > 0:
            with self._lock:
                if not self._closed and len(self._idle) < self.max_idle:
                    self._idle.append(conn)
                    return
        self._hang_up(conn.smtp, polite=True)

    def _connect(self) -> _Connection:
        try:
            # Connects and reads the greeting (SMTPConnectError unless it is 220).
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        except smtplib.SMTPResponseException as exc:
            code = _reply_code(exc)
            raise NotDelivered(
                f"greeting from {self.host}:{self.port}: {exc}", permanent=code is not None and code >= 500, code=code
            ) from exc
        except Exception as exc:  # noqa: BLE001 - refused, unreachable, timed out: nothing was sent
            raise NotDelivered(f"connecting to {self.host}:{self.port}: {exc!r}", permanent=False) from exc
        return _Connection(smtp)

    def _deliver(
        self, conn: _Connection, from_addr: str, to_addrs: list[str], international: bool, block: bytes, *, fresh: bool
    ) -> None:
        """One message over ``conn``: greets first when ``fresh``, else raises ``_Stale`` when
        the connection shows it was closed by the server before the 354 to DATA. Keeps the
        connection after an accepted message, hangs it up after anything else."""
        smtp = conn.smtp
        polite = True  # the server is still answering: say QUIT rather than just hang up
        accepted = False
        try:
            try:
                if fresh:
                    self._greet(smtp)
                self._converse(smtp, from_addr, to_addrs, international)
            except Exception as exc:
                if not fresh and _shows_dead(exc):
                    polite = False
                    raise _Stale() from exc
                raise
            # The server said 354: from here on, what it has depends on the terminator.
            try:
                smtp.send(block)
            except Exception as exc:  # noqa: BLE001
                # sendall failed, so the end of the block (the terminator) was not all written:
                # the server cannot have taken the message.
                polite = False
                raise NotDelivered(f"the connection failed while sending the message: {exc!r}", permanent=False) from exc
            try:
                code, text = smtp.getreply()
            except Exception as exc:  # noqa: BLE001 - timeout, EOF, reset, over-long reply
                polite = False
                raise DeliveryUnknown(
                    f"the message was sent but the final reply did not come: {exc!r}"
                ) from exc
            if 200 <= code <= 299:
                accepted = True
                return
            if 400 <= code <= 599:
                raise _refusal("end of data", code, text)
            polite = False
            raise DeliveryUnknown(f"the message was sent but the final reply is not an SMTP reply: {code} {text!r}")
        except (NotDelivered, DeliveryUnknown, _Stale):
            raise
        except smtplib.SMTPResponseException as exc:  # a refusal before the data
            reply = _reply_code(exc)
            raise NotDelivered(
                f"{type(exc).__name__}: {exc.smtp_code} {exc.smtp_error!r}", permanent=reply is not None and reply >= 500, code=reply
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:  # the server lacks STARTTLS, AUTH or SMTPUTF8
            raise NotDelivered(f"the server cannot take this message: {exc}", permanent=True) from exc
        except Exception as exc:  # noqa: BLE001 - before the terminator: nothing was delivered
            polite = False
            raise NotDelivered(f"the SMTP conversation failed before the message was sent: {exc!r}", permanent=False) from exc
        finally:
            if accepted:
                self._put_back(conn)
            else:
                self._hang_up(smtp, polite)

    def _greet(self, smtp: smtplib.SMTP) -> None:
        """A new connection's set-up: EHLO (or HELO), then STARTTLS and AUTH if configured."""
        smtp.ehlo_or_helo_if_needed()
        if self.starttls:
            smtp.starttls()
            smtp.ehlo()
        if self.user and self.password:
            smtp.login(self.user, self.password)

    @staticmethod
    def _converse(smtp: smtplib.SMTP, from_addr: str, to_addrs: list[str], international: bool) -> None:
        """One transaction up to the server's 354 to DATA; raises for any refusal."""
        smtp.command_encoding = "ascii"  # as for a new connection: SMTPUTF8 is per message
        options: list[str] = []
        if international:
            if not smtp.has_extn("smtputf8"):
                raise smtplib.SMTPNotSupportedError("the recipient or sender address needs SMTPUTF8")
            options = ["SMTPUTF8", "BODY=8BITMIME"]
        code, text = smtp.mail(from_addr, options)
        if code != 250:
            raise _refusal(f"MAIL FROM:<{from_addr}>", code, text)
        for rcpt in to_addrs:
            # Every recipient must be taken: a partial delivery could not be completed later
            # without sending the message twice to the others.
            code, text = smtp.rcpt(rcpt)
            if code not in (250, 251):
                raise _refusal(f"RCPT TO:<{rcpt}>", code, text)
        smtp.putcmd("data")
        code, text = smtp.getreply()
        if code != 354:
            raise _refusal("DATA", code, text)

    @staticmethod
    def _hang_up(smtp: smtplib.SMTP, polite: bool) -> None:
        """Always close the connection: QUIT while the server is answering, errors ignored
        (the outcome is already decided), then close the socket."""
        try:
            if polite and smtp.sock is not None:
                smtp.quit()
        except Exception:  # noqa: BLE001 - the outcome is already known
            pass
        finally:
            smtp.close()


class RecordingMailer:
    """A fake mailer that keeps what it is given: ``attempts`` has every message passed to
    ``send``, ``sent`` those that were "delivered".

    ``fail_with`` is a list of exceptions (``NotDelivered``/``DeliveryUnknown``) that the next
    sends raise, one per call in order, before sends succeed again; e.g.
    ``RecordingMailer(fail_with=[DeliveryUnknown("no reply")])``.
    """

    def __init__(self, fail_with: Iterable[BaseException] = ()) -> None:
        self.sent: list[EmailMessage] = []
        self.attempts: list[EmailMessage] = []
        self.fail_with: list[BaseException] = list(fail_with)

    def send(self, message: EmailMessage) -> None:
        self.attempts.append(message)
        if self.fail_with:
            raise self.fail_with.pop(0)
        self.sent.append(message)
