"""Export the JSON Schema of every topic model to ``schemas/json/`` (``hotline schemas export``).

CI runs ``hotline schemas check`` so the checked-in files never drift from the models.
"""

from __future__ import annotations

import json
from pathlib import Path

from schemas.topics import TOPICS

JSON_DIR = Path(__file__).parent / "json"


def render() -> dict[str, str]:
    out: dict[str, str] = {}
    for name, topic in TOPICS.items():
        schema = topic.model.model_json_schema()
        schema["$id"] = f"https://hotline.invalid/schemas/{name}.json"
        schema["x-topic"] = name
        schema["x-key"] = topic.key_field
        out[f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def export(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in render().items():
        path = directory / filename
        path.write_text(text)
        written.append(path)
    return written


def stale(directory: Path = JSON_DIR) -> list[str]:
    """Names of schema files that are missing or differ from the models."""
    bad = []
    for filename, text in render().items():
        path = directory / filename
        if not path.exists() or path.read_text() != text:
            bad.append(filename)
    return bad
