"""The bank snapshot's arrays on disk: written durably, and mapped so that an array read only
on a hit costs the pages read, not the file.

Why: the kernel maps a file's page cache in *folios*, and ext4 (Linux 6.16 and later) and
other file systems cache a file written or read ahead in large ones, up to 2 MiB. Touching one
byte of a mapped array then maps (and counts in the process's RSS) the whole 2 MiB around it.
For the arrays every query scans (the PDQ and pHash tables and codes) that costs nothing: all
their pages are in use after a few queries. For the arrays read only when a lookup hits or a
4-byte prefix collides (an exact index's keys and ids, a Hamming index's ids, the entry
table), it was most of what they occupied: a classify process had 22 MB of them resident after
16,000 image look-ups that touched a few dozen of their pages (``docs/benchmarks.md``, ninth
round). So those arrays are mapped with ``MADV_RANDOM`` (no read-ahead, so a fault reads one
page), and the cached copy a writer left behind (large folios) is dropped from the page cache
first, where no process has it mapped. Nothing else changes: the arrays are read-only maps of
the same ``.npy`` files, and on a platform without these calls they are ordinary maps.
"""

from __future__ import annotations

import mmap as _mmap
import os
from pathlib import Path
from typing import Literal

import numpy as np


def _drop_cached(fd: int) -> None:
    """Drop the file's clean, unmapped pages from the page cache (a hint; pages another
    process maps stay where they are)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def save_array(path: Path, array: np.ndarray, *, sparse: bool = False) -> None:
    """Write ``array`` as ``.npy`` and flush it to disk (a snapshot is published by renaming
    its directory: the files must be complete on disk before the name points at them).
    ``sparse``: an array read only on hits (see the module's docstring); the writer's cached
    copy is dropped so that readers cache only the pages they read."""
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
        if sparse:
            _drop_cached(f.fileno())


def load_array(path: Path, *, mmap: bool = False, sparse: bool = False) -> np.ndarray:
    """An array written by :func:`save_array`: read (``mmap=False``), mapped read-only, or,
    for ``sparse`` arrays, mapped page by page (``MADV_RANDOM``, the cached large folios
    dropped first)."""
    mode: Literal["r"] | None = "r" if mmap else None
    if not (mmap and sparse and hasattr(_mmap, "MADV_RANDOM")):
        return np.load(path, mmap_mode=mode, allow_pickle=False)
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
        size = os.fstat(f.fileno()).st_size
        if fortran or dtype.hasobject or size <= offset:  # not written by save_array, or empty
            return np.load(path, mmap_mode=mode, allow_pickle=False)
        _drop_cached(f.fileno())
        mapped = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ)
    mapped.madvise(_mmap.MADV_RANDOM)
    return np.ndarray(shape, dtype=dtype, buffer=mapped, offset=offset)
