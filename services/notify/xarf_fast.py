"""A fast yes for a valid X-ARF report: the same checks as ``xarf.parse`` (the X-ARF v4 JSON
Schemas the ``xarf`` package ships, its format checks, no field the schemas do not define,
the package's typed model), with the schemas compiled once by ``jsonschema_rs``.

Why: ``xarf.parse`` walks the schemas with the pure-Python ``jsonschema`` on every call, about
1.7 ms of CPU per notice, the largest single cost of the notify stage after the database
(issue 13); the compiled validator takes ~0.05 ms.

It only ever says *yes*: :func:`surely_valid` is True when every check passes, and then
``xarf.parse`` would accept the report too. For anything else ``validate`` in
``services.notify.xarf_report`` asks ``xarf.parse`` itself, which decides and explains, so a
report the two engines judge differently (``jsonschema_rs`` is the stricter: e.g. a pattern's
``$`` does not match before a trailing newline as Python's ``re`` does) gets the package's
verdict and its messages. The format checks are the very functions ``jsonschema`` uses
(``jsonschema.FormatChecker``, with ``rfc3986-validator``, ``fqdn`` and ``rfc3339-validator``), so
the two cannot differ there either.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs
import pydantic
import xarf

SCHEMAS = Path(xarf.__file__).parent / "schemas"
MASTER_ID = "https://xarf.org/schemas/v4/xarf-v4-master.json"


def _format(checker: jsonschema.FormatChecker, name: str) -> Callable[[str], bool]:
    def conforms(value: str) -> bool:
        return checker.conforms(value, name)
    return conforms


@functools.cache
def _validator() -> jsonschema_rs.Validator:
    """The master schema with every schema it refers to, compiled once per process."""
    schemas = [json.loads(p.read_text(encoding="utf-8"))
               for p in [*sorted(SCHEMAS.glob("*.json")), *sorted((SCHEMAS / "types").glob("*.json"))]]
    by_id = {s["$id"]: s for s in schemas if s.get("$id")}
    checker = jsonschema.FormatChecker()
    return jsonschema_rs.Draft202012Validator(
        by_id[MASTER_ID],
        registry=jsonschema_rs.Registry(list(by_id.items())),
        formats={name: _format(checker, name) for name in checker.checkers},
        validate_formats=True,
    )


@functools.cache
def _known_fields(category: str, type_: str) -> frozenset[str]:
    """The top-level fields the schemas define for ``category``/``type_``: what the package's
    validator warns about as unknown otherwise."""
    registry = xarf.schema_registry
    return frozenset(registry.get_core_property_names()) | frozenset(registry.get_category_fields(category, type_))


_TYPED: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(xarf.AnyXARFReport)


def surely_valid(report: dict[str, Any]) -> bool:
    """True when ``report`` (JSON types only) passes every check ``xarf.parse`` makes; False
    means "ask ``xarf.parse``", not necessarily invalid."""
    category, type_ = report.get("category"), report.get("type")
    if not isinstance(category, str) or not isinstance(type_, str) or not category or not type_:
        return False
    if not _known_fields(category, type_).issuperset(report):
        return False
    if not _validator().is_valid(report):
        return False
    try:
        _TYPED.validate_python(report)
    except pydantic.ValidationError:
        return False
    return True
