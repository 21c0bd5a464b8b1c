"""``SmtpMailer`` against real SMTP servers on 127.0.0.1: what it raises decides whether a
notice may be sent again, so every way an SMTP conversation can end is played here.

Two kinds of server: ``SmtpSink`` (aiosmtpd, with its misbehaving modes) and, for replies
aiosmtpd will not give (a refused greeting, a garbage reply, a reset in the middle of the
body), ``ScriptedSmtp``, a one-connection server driven by a table of replies. Both listen on
127.0.0.1 only and are stopped by their fixtures; every wait is bounded by the mailer's
1-second timeout or the servers' own socket timeouts.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest

from doubles.loopback import SmtpSink, free_port
from services.notify.mailer import (
    DeliveryUnknown,
    NotDelivered,
    RecordingMailer,
    SmtpMailer,
    data_block,
)

pytestmark = pytest.mark.timeout(30)

TIMEOUT = 1.0  # the mailer's per-operation timeout in these tests


def notice(body: str = "Please remove the material at http://img.hoster-a.test/x.jpg\n") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "ntd@hotline.test"
    msg["To"] = "abuse@hoster-a.test"
    msg["Subject"] = "Notice and takedown"
    msg["Message-ID"] = "<ntd-1@hotline.test>"
    msg["X-Hotline-Notice-Id"] = "ntd-1"
    msg.set_content(body)
    return msg


def mailer_for(port: int) -> SmtpMailer:
    return SmtpMailer("127.0.0.1", port, timeout=TIMEOUT)


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    server = SmtpSink().start()
    try:
        yield server
    finally:
        server.stop()


# --- aiosmtpd -----------------------------------------------------------------------------


def test_success_is_received_once(sink: SmtpSink) -> None:
    mailer_for(sink.port).send(notice())
    (mail,) = sink.snapshot()
    assert sink.received == 1
    assert mail.answered and mail.rcpt_tos == ["abuse@hoster-a.test"]
    assert mail.notice_id == "ntd-1"
    assert "http://img.hoster-a.test/x.jpg" in mail.message.get_payload()


def test_body_is_quoted_and_bcc_is_envelope_only(sink: SmtpSink) -> None:
    msg = notice(".starts with a dot\nsecond line\n.\nafter a lone dot\n")
    msg["Bcc"] = "copy@hotline.test"
    mailer_for(sink.port).send(msg)
    (mail,) = sink.snapshot()
    assert mail.rcpt_tos == ["abuse@hoster-a.test", "copy@hotline.test"]
    assert mail.message["Bcc"] is None
    body = mail.message.get_payload().replace("\r\n", "\n")
    assert body == ".starts with a dot\nsecond line\n.\nafter a lone dot\n"


def test_server_not_listening_is_not_delivered_temporary() -> None:
    port = free_port()  # bound and released: nothing listens there
    with pytest.raises(NotDelivered) as caught:
        mailer_for(port).send(notice())
    assert caught.value.permanent is False and caught.value.code is None


def test_stopped_sink_refuses_then_a_retry_delivers_once(sink: SmtpSink) -> None:
    sink.stop()
    with pytest.raises(NotDelivered):
        mailer_for(sink.port).send(notice())
    sink.start()
    mailer_for(sink.port).send(notice())
    assert sink.received == 1


def test_recipient_refused_550_is_permanent(sink: SmtpSink) -> None:
    sink.mode = "refuse_rcpt"
    with pytest.raises(NotDelivered) as caught:
        mailer_for(sink.port).send(notice())
    assert caught.value.permanent is True and caught.value.code == 550
    assert sink.received == 0 and sink.refused == 1


def test_451_after_data_is_temporary(sink: SmtpSink) -> None:
    sink.mode = "tempfail"
    with pytest.raises(NotDelivered) as caught:
        mailer_for(sink.port).send(notice())
    assert caught.value.permanent is False and caught.value.code == 451
    assert sink.received == 0 and sink.refused == 1


def test_silence_after_the_data_is_delivery_unknown(sink: SmtpSink) -> None:
    sink.mode = "no_reply"
    started = time.monotonic()
    with pytest.raises(DeliveryUnknown):
        mailer_for(sink.port).send(notice())
    elapsed = time.monotonic() - started
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 2.0
    (mail,) = sink.snapshot()
    assert sink.received == 1 and not mail.answered and mail.notice_id == "ntd-1"


def test_drop_before_the_final_reply_is_delivery_unknown(sink: SmtpSink) -> None:
    sink.mode = "drop"
    started = time.monotonic()
    with pytest.raises(DeliveryUnknown):
        mailer_for(sink.port).send(notice())
    assert time.monotonic() - started < TIMEOUT + 2.0
    (mail,) = sink.snapshot()
    assert sink.received == 1 and not mail.answered


def test_modes_can_change_between_sends(sink: SmtpSink) -> None:
    sink.mode = "tempfail"
    with pytest.raises(NotDelivered):
        mailer_for(sink.port).send(notice())
    sink.mode = "accept"
    mailer_for(sink.port).send(notice())
    assert sink.received == 1 and sink.snapshot()[0].answered


# --- a scripted server for the replies aiosmtpd does not give ------------------------------


Reply = str | None


class ScriptedSmtp:
    """Serves ``connections`` SMTP connections on 127.0.0.1, one after the other, from
    ``replies``: verb (``greeting``, ``EHLO``, ``MAIL``, ``RCPT``, ``DATA``, ``end``, ``QUIT``)
    -> the reply line to send, or ``None`` to close the connection instead; a list gives the
    replies to that verb's occurrences in order (over all connections), then the default.
    Unlisted verbs get ``250 OK`` (``354`` for DATA, ``221`` for QUIT). With
    ``close_before_body`` the connection is closed right after the 354, with the body unread.
    ``messages`` counts the bodies read up to the terminator."""

    def __init__(
        self, replies: dict[str, Reply | list[Reply]], close_before_body: bool = False, connections: int = 1
    ) -> None:
        self.replies = {verb: list(r) if isinstance(r, list) else r for verb, r in replies.items()}
        self.close_before_body = close_before_body
        self.connections = connections
        self.messages = 0
        self.commands: list[str] = []
        self.error: BaseException | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        if close_before_body:  # a small window, so that the sender cannot buffer the body
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self._listener.settimeout(5.0)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            for _ in range(self.connections):
                try:
                    conn, _ = self._listener.accept()
                except OSError as exc:
                    self.error = exc
                    return
                with conn:
                    conn.settimeout(5.0)
                    try:
                        self._converse(conn, conn.makefile("rb"))
                    except OSError as exc:  # the client hung up: fine, unless a test says otherwise
                        self.error = exc
        finally:
            self._listener.close()

    def _reply(self, verb: str, default: str) -> Reply:
        reply = self.replies.get(verb, default)
        if isinstance(reply, list):
            return reply.pop(0) if reply else default
        return reply

    def _say(self, conn: socket.socket, verb: str, default: str) -> bool:
        reply = self._reply(verb, default)
        if reply is None:
            return False
        conn.sendall(reply.encode() + b"\r\n")
        return True

    def _converse(self, conn: socket.socket, rfile: object) -> None:
        assert hasattr(rfile, "readline")
        if not self._say(conn, "greeting", "220 scripted.test ESMTP"):
            return
        while True:
            line = rfile.readline()
            if not line:
                return
            verb = line.split(b" ", 1)[0].strip().upper().decode()
            self.commands.append(verb)
            if verb == "DATA":
                reply = self._reply("DATA", "354 go ahead")
                if reply is None:
                    return
                conn.sendall(reply.encode() + b"\r\n")
                if not reply.startswith("354"):
                    continue
                if self.close_before_body:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    return  # closed with the body unread: the sender's writes are reset
                while rfile.readline() not in (b".\r\n", b""):
                    pass
                self.messages += 1
                if not self._say(conn, "end", "250 queued"):
                    return
            elif verb == "QUIT":
                self._say(conn, "QUIT", "221 bye")
                return
            elif not self._say(conn, verb, "250 OK"):
                return

    def join(self) -> None:
        self._listener.close()
        self._thread.join(10.0)
        assert not self._thread.is_alive()


@pytest.fixture
def scripted() -> Iterator[list[ScriptedSmtp]]:
    servers: list[ScriptedSmtp] = []
    try:
        yield servers
    finally:
        for server in servers:
            server.join()


def serve(servers: list[ScriptedSmtp], replies: dict[str, Reply | list[Reply]], **kw: Any) -> ScriptedSmtp:
    server = ScriptedSmtp(replies, **kw)
    servers.append(server)
    return server


def test_greeting_421_is_temporary(scripted: list[ScriptedSmtp]) -> None:
    server = serve(scripted, {"greeting": "421 too busy"})
    with pytest.raises(NotDelivered) as caught:
        mailer_for(server.port).send(notice())
    assert caught.value.permanent is False and caught.value.code == 421


def test_data_command_refused_is_not_delivered(scripted: list[ScriptedSmtp]) -> None:
    server = serve(scripted, {"DATA": "554 no valid recipients"})
    with pytest.raises(NotDelivered) as caught:
        mailer_for(server.port).send(notice())
    assert caught.value.permanent is True and caught.value.code == 554
    server.join()
    assert server.messages == 0 and server.commands[-1] == "QUIT"


def test_disconnect_before_data_is_temporary(scripted: list[ScriptedSmtp]) -> None:
    server = serve(scripted, {"RCPT": None})
    with pytest.raises(NotDelivered) as caught:
        mailer_for(server.port).send(notice())
    assert caught.value.permanent is False and caught.value.code is None


def test_starttls_not_offered_is_permanent(scripted: list[ScriptedSmtp]) -> None:
    server = serve(scripted, {"EHLO": "250 scripted.test"})
    with pytest.raises(NotDelivered) as caught:
        SmtpMailer("127.0.0.1", server.port, starttls=True, timeout=TIMEOUT).send(notice())
    assert caught.value.permanent is True
    server.join()
    assert server.messages == 0


def test_bad_credentials_535_is_permanent(scripted: list[ScriptedSmtp]) -> None:
    server = serve(scripted, {"EHLO": "250-scripted.test\r\n250 AUTH PLAIN", "AUTH": "535 5.7.8 bad credentials"})
    with pytest.raises(NotDelivered) as caught:
        SmtpMailer("127.0.0.1", server.port, user="u", password="p", timeout=TIMEOUT).send(notice())
    assert caught.value.permanent is True and caught.value.code == 535
    server.join()
    assert server.messages == 0


def test_reset_while_sending_the_body_is_not_delivered(scripted: list[ScriptedSmtp]) -> None:
    # Far more than the socket buffers hold, so the reset reaches the sender mid-body,
    # before the terminator could be written.
    server = serve(scripted, {}, close_before_body=True)
    big = ("x" * 76 + "\n") * 120_000  # about 9 MB
    with pytest.raises(NotDelivered) as caught:
        mailer_for(server.port).send(notice(big))
    assert caught.value.permanent is False and "while sending the message" in str(caught.value)
    assert server.messages == 0


def test_garbage_final_reply_is_delivery_unknown(scripted: list[ScriptedSmtp]) -> None:
    server = serve(scripted, {"end": "hello?"})
    with pytest.raises(DeliveryUnknown):
        mailer_for(server.port).send(notice())
    server.join()
    assert server.messages == 1


def test_multiline_final_reply_cut_off_is_delivery_unknown(scripted: list[ScriptedSmtp]) -> None:
    server = serve(scripted, {"end": "250-queued as 1234", "QUIT": None})
    with pytest.raises(DeliveryUnknown):
        mailer_for(server.port).send(notice())
    server.join()
    assert server.messages == 1


def test_quit_failing_after_250_is_ignored(scripted: list[ScriptedSmtp]) -> None:
    server = serve(scripted, {"QUIT": None})  # the server hangs up instead of answering QUIT
    mailer = SmtpMailer("127.0.0.1", server.port, timeout=TIMEOUT, max_uses=1)  # hangs up after the send
    mailer.send(notice())
    server.join()
    assert server.messages == 1 and server.commands[-1] == "QUIT"


def test_close_says_quit_on_the_idle_connection(scripted: list[ScriptedSmtp]) -> None:
    server = serve(scripted, {"QUIT": None})
    mailer = mailer_for(server.port)
    mailer.send(notice())
    mailer.close()
    server.join()
    assert server.messages == 1 and server.commands == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]


# --- reused connections --------------------------------------------------------------------


def numbered(n: int) -> EmailMessage:
    msg = notice()
    msg.replace_header("X-Hotline-Notice-Id", f"ntd-{n}")
    msg.replace_header("Message-ID", f"<ntd-{n}@hotline.test>")
    return msg


def test_sends_reuse_one_connection(sink: SmtpSink) -> None:
    mailer = mailer_for(sink.port)
    for n in range(3):
        mailer.send(numbered(n))
    mailer.close()
    assert sink.received == 3 and sink.connections == 1
    assert sink.count_by_notice() == {"ntd-0": 1, "ntd-1": 1, "ntd-2": 1}


def test_connection_dropped_while_idle_is_replaced_and_the_message_delivered_once(sink: SmtpSink) -> None:
    mailer = mailer_for(sink.port)
    mailer.send(numbered(1))
    assert sink.drop_connections() == 1  # the server's idle timeout
    mailer.send(numbered(2))
    mailer.send(numbered(3))
    mailer.close()
    assert sink.count_by_notice() == {"ntd-1": 1, "ntd-2": 1, "ntd-3": 1}
    assert sink.connections == 2


def test_server_restarted_while_idle_is_replaced(sink: SmtpSink) -> None:
    mailer = mailer_for(sink.port)
    mailer.send(numbered(1))
    sink.stop()
    sink.start()
    mailer.send(numbered(2))
    mailer.close()
    assert sink.count_by_notice() == {"ntd-1": 1, "ntd-2": 1}


def test_421_to_mail_on_a_reused_connection_is_retried_on_a_fresh_one(scripted: list[ScriptedSmtp]) -> None:
    server = serve(scripted, {"MAIL": ["250 OK", "421 4.4.2 idle too long, closing"]}, connections=2)
    mailer = mailer_for(server.port)
    mailer.send(numbered(1))
    mailer.send(numbered(2))
    mailer.close()
    server.join()
    assert server.messages == 2
    assert server.commands == ["EHLO", "MAIL", "RCPT", "DATA", "MAIL", "EHLO", "MAIL", "RCPT", "DATA", "QUIT"]


def test_421_on_a_fresh_connection_is_not_retried(scripted: list[ScriptedSmtp]) -> None:
    server = serve(scripted, {"MAIL": "421 4.3.2 shutting down"})
    with pytest.raises(NotDelivered) as caught:
        mailer_for(server.port).send(notice())
    assert caught.value.code == 421 and caught.value.permanent is False
    server.join()
    assert server.commands == ["EHLO", "MAIL", "QUIT"]


def test_drop_after_the_data_on_a_reused_connection_is_unknown_and_not_retried(sink: SmtpSink) -> None:
    mailer = mailer_for(sink.port)
    mailer.send(numbered(1))
    sink.mode = "drop"
    with pytest.raises(DeliveryUnknown):
        mailer.send(numbered(2))
    assert sink.count_by_notice() == {"ntd-1": 1, "ntd-2": 1} and sink.connections == 1
    sink.mode = "accept"
    mailer.send(numbered(3))  # the uncertain connection was closed: a new one
    mailer.close()
    assert sink.connections == 2 and sink.received == 3


def test_silence_after_the_data_on_a_reused_connection_is_unknown_and_not_retried(sink: SmtpSink) -> None:
    mailer = mailer_for(sink.port)
    mailer.send(numbered(1))
    sink.mode = "no_reply"
    with pytest.raises(DeliveryUnknown):
        mailer.send(numbered(2))
    mailer.close()
    assert sink.count_by_notice() == {"ntd-1": 1, "ntd-2": 1} and sink.connections == 1


def test_refusals_on_a_reused_connection_are_reported_and_close_it(sink: SmtpSink) -> None:
    mailer = mailer_for(sink.port)
    mailer.send(numbered(1))
    sink.mode = "tempfail"
    with pytest.raises(NotDelivered) as caught:
        mailer.send(numbered(2))
    assert caught.value.code == 451 and sink.refused == 1 and sink.connections == 1
    sink.mode = "refuse_rcpt"
    with pytest.raises(NotDelivered) as caught:
        mailer.send(numbered(3))
    assert caught.value.code == 550 and caught.value.permanent is True and sink.connections == 2
    sink.mode = "accept"
    mailer.send(numbered(4))
    mailer.close()
    assert sink.connections == 3 and sink.count_by_notice() == {"ntd-1": 1, "ntd-4": 1}


def test_idle_expired_connection_is_not_reused(sink: SmtpSink) -> None:
    now = [1000.0]
    mailer = SmtpMailer("127.0.0.1", sink.port, timeout=TIMEOUT, idle_seconds=30.0, clock=lambda: now[0])
    mailer.send(numbered(1))
    now[0] += 29.0
    mailer.send(numbered(2))  # idle 29 s: reused
    assert sink.connections == 1
    now[0] += 30.0
    mailer.send(numbered(3))  # idle 30 s: closed, a new one
    mailer.close()
    assert sink.connections == 2 and sink.received == 3


def test_idle_seconds_zero_turns_reuse_off(sink: SmtpSink) -> None:
    mailer = SmtpMailer("127.0.0.1", sink.port, timeout=TIMEOUT, idle_seconds=0)
    mailer.send(numbered(1))
    mailer.send(numbered(2))
    assert sink.connections == 2 and sink.received == 2


def test_connection_is_replaced_after_max_uses(sink: SmtpSink) -> None:
    mailer = SmtpMailer("127.0.0.1", sink.port, timeout=TIMEOUT, max_uses=2)
    for n in range(5):
        mailer.send(numbered(n))
    mailer.close()
    assert sink.connections == 3 and sink.received == 5


def test_concurrent_sends_are_each_delivered_once(sink: SmtpSink) -> None:
    threads, per_thread = 4, 10
    mailer = mailer_for(sink.port)
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        start.wait(5.0)
        try:
            for i in range(per_thread):
                mailer.send(numbered(t * per_thread + i))
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(20.0)
    mailer.close()
    assert not errors
    counts = sink.count_by_notice()
    assert len(counts) == threads * per_thread and set(counts.values()) == {1}
    # A connection serves one send at a time and none is thrown away (max_idle >= threads),
    # so no more connections than threads were ever opened.
    assert 1 <= sink.connections <= threads


def test_sends_after_close_work_without_keeping_connections(sink: SmtpSink) -> None:
    mailer = mailer_for(sink.port)
    mailer.send(numbered(1))
    mailer.close()
    mailer.send(numbered(2))
    mailer.send(numbered(3))
    assert sink.connections == 3 and sink.received == 3


# --- the pieces and the fake ---------------------------------------------------------------


def test_data_block_normalises_line_ends_and_quotes_dots() -> None:
    # A bare LF before a dot must not end the data early on a lenient server (SMTP smuggling).
    assert data_block(b"a\n.\nb\rc\r\n.d") == b"a\r\n..\r\nb\r\nc\r\n..d\r\n.\r\n"
    assert data_block(b"ends\r\n") == b"ends\r\n.\r\n"


def test_message_without_recipient_is_permanent_and_connects_nowhere() -> None:
    msg = notice()
    del msg["To"]
    with pytest.raises(NotDelivered) as caught:
        SmtpMailer("127.0.0.1", free_port(), timeout=TIMEOUT).send(msg)
    assert caught.value.permanent is True


def test_recording_mailer_raises_what_it_is_given_then_sends() -> None:
    unknown = DeliveryUnknown("no final reply")
    mailer = RecordingMailer(fail_with=[NotDelivered("busy", permanent=False, code=451), unknown])
    with pytest.raises(NotDelivered):
        mailer.send(notice())
    with pytest.raises(DeliveryUnknown):
        mailer.send(notice())
    mailer.send(notice())
    assert len(mailer.attempts) == 3 and len(mailer.sent) == 1
