"""At most two glibc malloc arenas per process (``mallopt(M_ARENA_MAX)``).

Why: glibc gives each thread that allocates concurrently an arena of its own, up to eight per
core, and an arena keeps what its threads freed for reuse. A classify process has many threads
(the Kafka runtime's executor, each in-flight item's fetching threads, the relay, faust's), and
the images they decode and hash pass through those arenas: measured on this machine, that
freed-but-kept memory was the difference between a classify process with a 1M-entry bank
staying under 300 MB or not. Python's own small objects do not use these arenas (pymalloc), so
the lock contention fewer arenas bring is on the large, short-lived buffers only. Set in code,
at the start of ``hotline serve``, so it holds however the process is started; a no-op where
the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # glibc's <malloc.h>
ARENAS = 2


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap the arenas of this process; True when the C library took it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))
