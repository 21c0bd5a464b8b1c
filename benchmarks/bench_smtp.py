"""Cost per notice of ``SmtpMailer.send`` to a loopback SMTP server (aiosmtpd, ``SmtpSink``):
a new connection per message (as before issue 13: greeting, EHLO, MAIL, RCPT, DATA, QUIT)
against connections kept open and reused (MAIL, RCPT, DATA).

Why: at ~35 notices/s notify is the pipeline's bottleneck (issue 13) and connection set-up and
QUIT were about half of an SMTP send's round trips and a good share of its CPU on both ends.

Per message: wall time, the sending threads' CPU (``time.thread_time``) and the CPU of the
whole process (``time.process_time``: the senders and the aiosmtpd server thread, i.e. both
ends), and the connections the server saw. The message is notice-sized (a text part and an
X-ARF-like JSON attachment, ~6 kB).

    python -m benchmarks.bench_smtp                # 500 messages per row
    python -m benchmarks.bench_smtp --quick        # 100 messages per row
    python -m benchmarks.bench_smtp --threads 4    # also the rows with 4 sending threads

Bounded in count; loopback only. Compare code versions by ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from email.message import EmailMessage

from doubles.loopback import SmtpSink
from services.notify.mailer import SmtpMailer


def notice(n: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "ntd@hotline.test"
    msg["To"] = "abuse@hoster-a.test"
    msg["Subject"] = f"Notice and takedown ntd-{n}"
    msg["Message-ID"] = f"<ntd-{n}@hotline.test>"
    msg["X-Hotline-Notice-Id"] = f"ntd-{n}"
    msg.set_content("Please remove the material at the addresses below.\n" + "http://img.hoster-a.test/x.jpg\n" * 40)
    report = {"Reported-From": "ntd@hotline.test", "Category": "abuse", "Source": [f"http://img.hoster-a.test/{i}.jpg" for i in range(40)]}
    msg.add_attachment(json.dumps(report, indent=2).encode(), maintype="application", subtype="json", filename="report.json")
    return msg


def run(messages: int, threads: int, reuse: bool) -> dict[str, float]:
    sink = SmtpSink().start()
    try:
        # idle_seconds=0 turns reuse off: a connection per message, the old behaviour.
        mailer = SmtpMailer("127.0.0.1", sink.port, timeout=10.0, idle_seconds=30.0 if reuse else 0.0)
        mailer.send(notice(-1))  # warm up (imports, first connection)
        per_thread = messages // threads
        cpu: list[float] = []
        lock = threading.Lock()
        barrier = threading.Barrier(threads + 1)

        def work(t: int) -> None:
            barrier.wait()
            start = time.thread_time()
            for i in range(per_thread):
                mailer.send(notice(t * per_thread + i))
            with lock:
                cpu.append(time.thread_time() - start)

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        connections_before = sink.connections
        wall0, proc0 = time.perf_counter(), time.process_time()
        barrier.wait()
        for w in workers:
            w.join()
        wall, proc = time.perf_counter() - wall0, time.process_time() - proc0
        mailer.close()
        sent = per_thread * threads
        assert sink.received == sent + 1, "every message delivered once"
        return {
            "wall": wall * 1000 / sent,
            "client": sum(cpu) * 1000 / sent,
            "process": proc * 1000 / sent,
            "connections": sink.connections - connections_before,
            "sent": sent,
        }
    finally:
        sink.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="100 messages per row")
    parser.add_argument("--threads", type=int, default=1, help="also rows with this many sending threads")
    args = parser.parse_args(argv)
    messages = 100 if args.quick else args.messages
    print(f"python {platform.python_version()} on {platform.machine()}, {messages} messages per row, loopback aiosmtpd")
    print(f"{'mode':<28}{'threads':>8}{'wall ms/msg':>13}{'client CPU':>12}{'both ends CPU':>15}{'connections':>13}")
    thread_counts = sorted({1, args.threads})
    for threads in thread_counts:
        for reuse in (False, True):
            row = run(messages, threads, reuse)
            mode = "reused connections" if reuse else "connection per message"
            print(
                f"{mode:<28}{threads:>8}{row['wall']:>13.2f}{row['client']:>12.2f}{row['process']:>15.2f}"
                f"{int(row['connections']):>13}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
