"""The operator's YAML files (``HOTLINE_HOSTING_FILE``, ``HOTLINE_PARTNERS_FILE``): read once at
start, and a mistake in one is the operator's to fix, so it must say what and where in one
line (:class:`OperatorFileError`), never end in a traceback. ``python -m benchmarks.fuzz_inputs``
feeds both loaders random and mutated documents to hold them to that.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

MAX_BYTES = 10 * 1024 * 1024
"""A hosting or partners file is a few kilobytes; a larger one is a mistake (and a YAML bomb
stays out of memory)."""


_SURROGATE = re.compile("[\ud800-\udfff]")


def undecodable(text: str) -> str | None:
    """Why ``text`` is not clean UTF-8 text, or None. CSV imports open files with
    ``surrogateescape``, so a byte that is not UTF-8 arrives as a surrogate U+DC80..U+DCFF and
    is named here as that byte; any other lone surrogate (text handed over by other code) could
    never be encoded into a message either."""
    m = _SURROGATE.search(text)
    if m is None:
        return None
    code = ord(m.group())
    if 0xDC80 <= code <= 0xDCFF:
        return f"not UTF-8 (byte 0x{code - 0xDC00:02X} at position {m.start()})"
    return f"not text (a lone surrogate U+{code:04X} at position {m.start()})"


class OperatorFileError(ValueError):
    """An operator file cannot be used: the message names the file and the problem."""


def _printable(text: str, limit: int = 500) -> str:
    """One line: control characters (a key with a newline in it) escaped, and not too long."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return out if len(out) <= limit else out[:limit] + "..."


def _why(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
        more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        return "; ".join(problems) + more
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return str(exc) or type(exc).__name__


def load_text(text: str, model: type[M], build: Callable[[M], T], what: str) -> T:
    """``build(model)`` of the YAML ``text``; :class:`OperatorFileError` naming ``what`` for
    anything wrong with it (YAML, shape, values)."""
    if len(text) > MAX_BYTES:
        raise OperatorFileError(f"{what}: larger than {MAX_BYTES} bytes")
    try:
        data = yaml.safe_load(text)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise OperatorFileError(f"{what}: the top level must be a mapping, not {type(data).__name__}")
        return build(model.model_validate(data))
    except OperatorFileError:
        raise
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
        raise OperatorFileError(f"{what}: {_printable(_why(exc))}") from None


def load_file(path: Path | str, model: type[M], build: Callable[[M], T], variable: str) -> T:
    what = f"{variable} ({path})"
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise OperatorFileError(f"{what}: cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise OperatorFileError(f"{what}: not UTF-8 (byte {exc.start})") from None
    return load_text(text, model, build, what)
