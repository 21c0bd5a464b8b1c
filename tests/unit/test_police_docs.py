"""The README's police section cannot rot: its example ``escalations.police`` and
``escalations.actions`` messages are generated here from the models, must equal what the README
shows, and must validate against the exported JSON Schemas (``schemas/json/``).

After changing a model: ``python -m tests.unit.test_police_docs`` prints the blocks to paste.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from schemas.facts import HostingFacts, ImageClassification, ImageFacts
from schemas.notices import AnalystClassification, Answer, PoliceAction, PoliceEscalation

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def examples() -> dict[str, dict[str, Any]]:
    """One example message per police topic, from the models (synthetic values)."""
    item = "3f2a9c0d1e6b4a7f8c5d2e1f0a9b8c7d"
    escalation = PoliceEscalation(
        escalation_id=f"pol-{item}", item_id=item, url="http://cdn.hoster-b.test/new/photo.jpg",
        images=[ImageFacts(url="http://cdn.hoster-b.test/new/photo.jpg", md5="9e107d9d372bb6826bd81d3542a419d6",
                           sha1="2fd4e1c67a2d28fced849ee1bb76e7391b93eb12",
                           sha256="d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592",
                           pdq="f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22", pdq_quality=100,
                           phash="c3c3e1f0f0e1c3c3", width=320, height=240, format="JPEG", byte_size=18211,
                           assessment=ImageClassification(
                               classification="national", age_group="pubescent", gender="female",
                               act="lascivious_exhibition", site_type="image_host",
                               commerciality="non_commercial", user_generated=True, xarf="B2"))],
        hosting=HostingFacts(host="cdn.hoster-b.test", ip="127.0.0.3", country="NL", asn=64502,
                             hoster="Hoster B B.V.", abuse="abuse@hoster-b.test", source="hosting_file"),
        first_seen=AT, last_seen=AT, report_ids=["5b1d0c3e9f2a4e8d9c7b6a5f4e3d2c1b"],
        classification=AnalystClassification(analyst="analyst-1", verdict="illegal", category="national",
                                             notes="new series", assessed_at=AT,
                                             answers=[Answer(id="victim_identifiable",
                                                             label="Could the victim be identified?",
                                                             value="no")]),
        escalated_at=AT, release_due_at=datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
    )
    action = PoliceAction(action_id=f"pol-{item}:hold", escalation_id=f"pol-{item}", item_id=item, action="hold",
                          by="officer-7", reason="investigation: the content must stay online for now", at=AT)
    return {"escalations.police": escalation.model_dump(mode="json"),
            "escalations.actions": action.model_dump(mode="json")}


def rendered(topic: str, message: dict[str, Any]) -> str:
    return f"<!-- example: {topic} -->\n```json\n{json.dumps(message, indent=2)}\n```"


def readme_example(topic: str) -> dict[str, Any]:
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- example: {re.escape(topic)} -->\n```json\n(.*?)\n```", text, re.S)
    assert found, f"README.md has no example for {topic}: run python -m tests.unit.test_police_docs"
    parsed: dict[str, Any] = json.loads(found.group(1))
    return parsed


@pytest.mark.parametrize("topic", ["escalations.police", "escalations.actions"])
def test_the_readme_example_is_the_models_and_validates(topic: str) -> None:
    shown = readme_example(topic)
    assert shown == examples()[topic], "README example is stale: run python -m tests.unit.test_police_docs"
    schema = json.loads((ROOT / "schemas" / "json" / f"{topic}.json").read_text())
    jsonschema.validate(shown, schema, format_checker=jsonschema.FormatChecker())


def test_the_readme_names_the_states_routes_and_setting() -> None:
    text = (ROOT / "README.md").read_text()
    for word in ("HOTLINE_POLICE_HOLD_SECONDS", "GET /api/v1/escalations", "/hold", "/release", "/received",
                 "`new`", "`received`", "`on_hold`", "`released`", "hotline police export", "--from-offset"):
        assert word in text, word


if __name__ == "__main__":
    for topic, message in examples().items():
        print(rendered(topic, message) + "\n")
