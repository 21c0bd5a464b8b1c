"""A hostile web server on loopback: what an abuser's hoster may do to the fetcher on purpose.

``HostileSite`` answers each path with one behaviour (``MODES``), written straight to the
socket so that it can misbehave below HTTP (trickle its header bytes, never end a body):

* ``/slow-headers``: the status line, then header bytes one at a time every ``interval``;
* ``/slow-body``: full headers (a large Content-Length), then body bytes one at a time;
* ``/endless``: headers without a length, then an endless body at full speed;
* ``/redirect/<n>``: 302 to ``/redirect/<n+1>``, forever (a loop);
* ``/slow-page``: an HTML page showing ``slow_images`` images, each of them ``/slow-image/<i>``
  (served as ``/slow-body``);
* anything added with ``add`` (bombs, huge or deeply nested HTML): served at once.

No behaviour lasts longer than ``max_seconds`` per connection (the server then closes it),
so a test of a fetcher that does *not* bound its time still ends by itself; it fails on its
assertion instead of hanging. Everything binds to loopback only.

The bombs (:func:`png_bomb` and friends) are synthetic: tiny files whose headers claim a huge
picture, never real imagery.
"""

from __future__ import annotations

import io
import socketserver
import struct
import threading
import time
import zlib
from typing import Any, Self

from PIL import Image

from doubles.loopback import _require_loopback

MODES = ("slow-headers", "slow-body", "endless", "redirect", "slow-page", "slow-image")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up on a hostile server is the point


class HostileSite:
    """See the module docstring. ``requests`` lists every request path, ``open_connections``
    how many connections are being served right now (a fetcher that gave up has closed its own)."""

    def __init__(
        self, host: str = "127.0.0.1", interval: float = 0.2, max_seconds: float = 60.0, slow_images: int = 5
    ) -> None:
        _require_loopback(host)
        self.interval = interval
        self.max_seconds = max_seconds
        self.slow_images = slow_images
        self.files: dict[str, tuple[str, bytes]] = {}
        self.requests: list[str] = []
        self.open_connections = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        site = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with site._lock:
                    site.open_connections += 1
                try:
                    site._serve(self.request)
                except OSError:
                    pass  # the fetcher hung up
                finally:
                    with site._lock:
                        site.open_connections -= 1

        self.server = _Server((host, 0), Handler)
        self.host, self.port = host, int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def add(self, path: str, content_type: str, body: bytes) -> None:
        self.files[path] = (content_type, body)

    # ---------------------------------------------------------------- behaviours

    def _serve(self, sock: Any) -> None:
        sock.settimeout(self.max_seconds)
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(4096)
            if not data or len(head) > 65536:
                return
            head += data
        path = head.split(b" ", 2)[1].decode("latin-1")
        with self._lock:
            self.requests.append(path)
        until = time.monotonic() + self.max_seconds
        if path in self.files:
            ctype, body = self.files[path]
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype.encode() + b"\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        elif path == "/slow-headers":
            sock.sendall(b"HTTP/1.1 200 OK\r\n")
            self._trickle(sock, b"X-Slow: " + b"a" * 100_000, until)
        elif path == "/slow-body" or path.startswith("/slow-image/"):
            kind = b"image/png" if path.startswith("/slow-image/") else b"text/html"
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: " + kind + b"\r\nContent-Length: 100000\r\n\r\n")
            self._trickle(sock, b"\x89PNG" + b"\0" * 99_996, until)
        elif path == "/endless":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n")
            chunk = b"<p>" + b"x" * 65_530 + b"</p>"
            while time.monotonic() < until and not self._stopping.is_set():
                sock.sendall(chunk)
        elif path.startswith("/redirect/"):
            n = int(path.rsplit("/", 1)[1] or 0)
            sock.sendall(f"HTTP/1.1 302 Found\r\nLocation: /redirect/{n + 1}\r\nContent-Length: 0\r\n\r\n".encode())
        elif path == "/slow-page":
            imgs = "".join(f'<img src="/slow-image/{i}">' for i in range(self.slow_images))
            body = f"<html><body>{imgs}</body></html>".encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
        else:
            sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    def _trickle(self, sock: Any, data: bytes, until: float) -> None:
        """One byte every ``interval``, until the data ends, ``max_seconds`` pass or the site stops."""
        for i in range(len(data)):
            if time.monotonic() >= until or self._stopping.wait(self.interval):
                return
            sock.sendall(data[i : i + 1])


# -------------------------------------------------------------------- synthetic bombs


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 8_000) -> bytes:
    """A valid grey PNG of ``side`` x ``side`` black pixels (64 MP by default: over the default
    60 MP cap) that compresses to some 60 KB: a decompression bomb."""
    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # filter byte + pixels
    parts = [comp.compress(row) for _ in range(side)]
    idat = b"".join(parts) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _tiny(fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB" if fmt != "GIF" else "P", (1, 1)).save(buf, fmt, **kw)
    return buf.getvalue()


def gif_bomb(side: int = 65_535) -> bytes:
    """A 1-pixel GIF whose logical screen claims ``side`` x ``side`` pixels (4.3 GP)."""
    data = bytearray(_tiny("GIF"))
    data[6:10] = struct.pack("<HH", side, side)
    return bytes(data)


def gif_frames_bomb(side: int = 2_000, frames: int = 40) -> bytes:
    """An animated GIF of ``frames`` flat frames of ``side`` x ``side`` (each under the pixel
    cap, all of them together far over what a browser should be asked to decode)."""
    images = [Image.new("P", (side, side), i % 2) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=10, loop=0)
    return buf.getvalue()


def jpeg_bomb(side: int = 65_500) -> bytes:
    """A 1-pixel baseline JPEG whose frame header (SOF0) claims ``side`` x ``side`` pixels."""
    data = bytearray(_tiny("JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def webp_bomb(side: int = 16_383) -> bytes:
    """A 1-pixel lossless WebP whose VP8L header claims ``side`` x ``side`` pixels (the format's
    maximum: 268 MP)."""
    data = bytearray(_tiny("WEBP", lossless=True))
    at = data.index(b"VP8L") + 8
    assert data[at] == 0x2F
    (bits,) = struct.unpack("<I", data[at + 1 : at + 5])
    bits = (bits & ~0x0FFFFFFF) | (side - 1) | ((side - 1) << 14)
    data[at + 1 : at + 5] = struct.pack("<I", bits)
    return bytes(data)


def huge_html(megabytes: int = 15) -> bytes:
    """An HTML page of ``megabytes`` MB of paragraphs (and one image at its end)."""
    para = b"<p>" + b"filler text " * 80 + b"</p>\n"
    body = para * (megabytes * 1_000_000 // len(para))
    return b"<html><body>" + body + b'<img src="/late.png"></body></html>'


def nested_html(depth: int = 100_000) -> bytes:
    """HTML nested ``depth`` elements deep, an image at the bottom."""
    return b"<html><body>" + b"<div>" * depth + b'<img src="/deep.png">' + b"</div>" * depth + b"</body></html>"


def many_images_html(count: int = 5_000) -> bytes:
    """A page referencing ``count`` distinct images."""
    return ("<html><body>" + "".join(f'<img src="/many/{i}.png">' for i in range(count))
            + "</body></html>").encode()
