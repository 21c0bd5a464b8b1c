"""The rules for a report's free-text fields, shared by every channel that takes them from
outside (the API and form models in ``services.ingest.routes``, ``hotline reports import``):
one e-mail rule, and no NUL or other control characters, which no reporter types and which
break logs, e-mails and databases downstream (PostgreSQL refuses NUL in text)."""

from __future__ import annotations

import re

EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f.]+(\.[^@\s\x00-\x1f\x7f.]+)+$")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""Control characters other than tab, line feed and carriage return (which text may hold)."""
EMAIL_MAX = 320


def check_text(value: str | None) -> str | None:
    """``value`` unchanged, or ValueError when it holds a control character (named by code)."""
    if value is not None and (m := CONTROL.search(value)):
        raise ValueError(f"contains the control character U+{ord(m.group()):04X} at position {m.start()}")
    return value


def check_email(value: str | None) -> str | None:
    """The address stripped (None when blank), or ValueError saying why it is not one."""
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    if CONTROL.search(value) or "\t" in value or "\n" in value or "\r" in value:
        raise ValueError("not a valid e-mail address: it contains a control character")
    if len(value) > EMAIL_MAX:
        raise ValueError(f"not a valid e-mail address: longer than {EMAIL_MAX} characters")
    if not EMAIL.match(value):
        raise ValueError("not a valid e-mail address")
    return value
