"""Checking an NTD e-mail's X-ARF attachment without trusting our own builder: the schema
files the ``xarf`` package ships, straight into jsonschema, and the package's validator."""

from __future__ import annotations

import json
from email.message import Message
from pathlib import Path
from typing import Any

import jsonschema
import referencing
import referencing.jsonschema
import xarf

SCHEMAS = Path(xarf.__file__).parent / "schemas"


def shipped_validator() -> jsonschema.Draft202012Validator:
    """content-csam.json from the package's files, with every schema it refers to."""
    resources = []
    for path in [*SCHEMAS.glob("*.json"), *(SCHEMAS / "types").glob("*.json")]:
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], referencing.jsonschema.DRAFT202012.create_resource(schema)))
    csam = json.loads((SCHEMAS / "types" / "content-csam.json").read_text())
    return jsonschema.Draft202012Validator(
        csam, registry=referencing.Registry().with_resources(resources), format_checker=jsonschema.FormatChecker()
    )


def attachments(msg: Message) -> list[Message]:
    return [p for p in msg.walk() if p.get_content_disposition() == "attachment"]


def checked_xarf(msg: Message) -> dict[str, Any]:
    """The e-mail's one attachment: ``application/json``, valid by both validators."""
    parts = attachments(msg)
    assert [p.get_content_type() for p in parts] == ["application/json"], [p.get_content_type() for p in parts]
    raw = parts[0].get_payload(decode=True)
    assert isinstance(raw, bytes)
    report: dict[str, Any] = json.loads(raw)
    shipped_validator().validate(report)
    parsed = xarf.parse(report)
    assert parsed.errors == [] and parsed.warnings == [] and isinstance(parsed.report, xarf.CsamReport)
    assert report["category"] == "content" and report["type"] == "csam"
    return report


def plain_text(msg: Message) -> str:
    """The text/plain part, decoded."""
    (part,) = [p for p in msg.walk() if p.get_content_type() == "text/plain" and p.get_content_disposition() != "attachment"]
    raw = part.get_payload(decode=True)
    assert isinstance(raw, bytes)
    return raw.decode(part.get_content_charset() or "utf-8")
