"""``hotline serve`` caps glibc's malloc arenas (``hotline.runtime.malloc``): on glibc the call
must take effect, elsewhere it must be a harmless no-op."""

from __future__ import annotations

import platform
import subprocess
import sys

from hotline.runtime.malloc import limit_arenas


def test_the_arena_cap_takes_on_glibc_and_is_harmless_elsewhere() -> None:
    took = limit_arenas()
    assert took is (platform.libc_ver()[0] == "glibc")


def test_serve_caps_the_arenas_before_it_starts_anything() -> None:
    """The CLI's serve command calls it first: checked on the command's code, since a process
    cannot read its arena cap back."""
    probe = (
        "import inspect, entrypoints.cli as c\n"
        "src = inspect.getsource(c.serve.callback)\n"
        "print(src.index('limit_arenas()') < src.index('get_settings()'))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
