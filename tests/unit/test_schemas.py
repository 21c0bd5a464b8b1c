"""Every topic's message model: JSON round trip, schema_version, and the exported JSON Schema is
current (the CI check: a model change without ``hotline schemas export`` fails here)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas import SCHEMA_VERSION, TOPICS, topic_for_model
from schemas.export import JSON_DIR, render, stale
from schemas.facts import BankMatch, HostingFacts, ImageFacts
from schemas.followups import RecheckDue
from schemas.items import ItemAccepted, ItemClassified
from schemas.notices import (
    AnalystClassification,
    NoticeEvent,
    PartnerForward,
    PartnerStatusUpdate,
    PoliceAction,
    PoliceEscalation,
    TakedownNotice,
)
from schemas.reports import ReportRejected, ReportSubmitted

WHEN = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
IMAGE = ImageFacts(
    url="http://a.test/1.jpg", md5="0" * 32, sha1="1" * 40, sha256="2" * 64, pdq="f" * 64, pdq_quality=90,
    phash="8" * 16, width=10, height=20, format="JPEG", byte_size=1234,
    match=BankMatch(entry_id=7, signal="pdq", distance=3, category="baseline", source="bank"),
)
HOSTING = HostingFacts(host="a.test", ip="192.0.2.1", country="NL", asn=64501, hoster="A", abuse="abuse@a.test",
                       source="hosting_file")

SAMPLES = {
    "reports.submitted": ReportSubmitted(report_id="r1", channel="web", urls=["http://a.test/", "not a url"],
                                         description="d", reporter_email="x@y.test", submitted_at=WHEN),
    "reports.rejected": ReportRejected(report_id="r1", stage="ingest", reason_code="invalid_host", reason="bad",
                                       payload={"url": "x", "nested": [1, None]}, source_topic="reports.submitted",
                                       rejected_at=WHEN),
    "items.accepted": ItemAccepted(item_id="i1", url="http://a.test/", report_ids=["r1", "r2"], accepted_at=WHEN),
    "items.classified": ItemClassified(item_id="i1", url="http://a.test/", online=True, http_status=200,
                                       content_type="text/html", images=[IMAGE, ImageFacts(url="u", error="broken")],
                                       hosting=HOSTING, known=True, route="ntd", reason="why", classified_at=WHEN),
    "notices.ntd": TakedownNotice(notice_id="ntd-i1", item_id="i1", url="http://a.test/", hoster="A",
                                  abuse_email="abuse@a.test", country="NL", images=[IMAGE], created_at=WHEN),
    "escalations.police": PoliceEscalation(
        escalation_id="pol-i1", item_id="i1", url="http://a.test/", images=[IMAGE], hosting=HOSTING,
        first_seen=WHEN, last_seen=WHEN, report_ids=["r1"],
        classification=AnalystClassification(analyst="ann", verdict="illegal", category="national",
                                             assessed_at=WHEN),
        escalated_at=WHEN),
    "escalations.actions": PoliceAction(action_id="pol-i1:release", escalation_id="pol-i1", item_id="i1",
                                        action="release", by="officer", at=WHEN),
    "partners.status": PartnerStatusUpdate(update_id="r1:i1:removed", country="DE", report_id="r1",
                                           partner_reference="DE-1", item_id="i1", url="http://a.test/",
                                           step="removed", action="CR", at=WHEN),
    "forwards.partner": PartnerForward(forward_id="fwd-i1", item_id="i1", url="http://a.test/", country="DE",
                                       partner_name="P", images=[IMAGE], hosting=HOSTING, created_at=WHEN),
    "notices.events": NoticeEvent(event_id="ntd-i1:sent", item_id="i1", kind="sent", notice_id="ntd-i1",
                                  detail="d", at=WHEN),
    "rechecks.due": RecheckDue(item_id="i1", action="check", due_at=WHEN, dispatched_at=WHEN),
}


def test_every_topic_has_a_sample() -> None:
    assert set(SAMPLES) == set(TOPICS)


@pytest.mark.parametrize("name", sorted(TOPICS))
def test_round_trip(name: str) -> None:
    topic = TOPICS[name]
    msg = SAMPLES[name]
    assert isinstance(msg, topic.model)
    wire = msg.to_bytes()
    back = topic.model.model_validate_json(wire)
    assert back == msg
    assert back.to_bytes() == wire
    assert json.loads(wire)["schema_version"] == SCHEMA_VERSION
    assert topic.key_of(msg)  # every sample has a non-empty key


@pytest.mark.parametrize("name", sorted(TOPICS))
def test_schema_version_and_key_in_json_schema(name: str) -> None:
    topic = TOPICS[name]
    schema = topic.model.model_json_schema()
    assert "schema_version" in schema["properties"]
    assert topic.key_field in schema["properties"]
    assert topic_for_model(topic.model) is topic


@pytest.mark.parametrize("name", sorted(TOPICS))
def test_messages_are_frozen(name: str) -> None:
    msg = SAMPLES[name]
    field = next(iter(type(msg).model_fields))
    with pytest.raises(ValidationError, match="frozen"):
        setattr(msg, field, "changed")


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    raw = json.loads(SAMPLES["items.accepted"].to_bytes())
    raw["added_in_v2"] = {"anything": True}
    raw["schema_version"] = 2
    back = ItemAccepted.model_validate_json(json.dumps(raw))
    assert back.item_id == "i1" and back.schema_version == 2


def test_checked_in_json_schemas_are_current() -> None:
    assert stale() == [], "run `hotline schemas export` and commit schemas/json/"


def test_stale_detects_drift(tmp_path: Path) -> None:
    for filename, text in render().items():
        (tmp_path / filename).write_text(text)
    assert stale(tmp_path) == []
    first = sorted(render())[0]
    (tmp_path / first).write_text((tmp_path / first).read_text().replace('"title"', '"titel"', 1))
    (tmp_path / sorted(render())[1]).unlink()
    assert sorted(stale(tmp_path)) == sorted(render())[:2]


def test_one_json_file_per_topic() -> None:
    assert sorted(p.name for p in JSON_DIR.glob("*.json")) == sorted(f"{name}.json" for name in TOPICS)
