"""The assessment API over real HTTP on loopback (embedded runtime, SQLite): per-image decisions
in ICCAM's fields and what they add up to, the errors that name the image and the field, the
hotline's own questions, and a senior analyst's change of a decision with its audit entries
and consequences (escalation withdrawn and bank entries retired, or escalated after all)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select

from doubles.loopback import LoopbackSite, free_port
from entrypoints.bootstrap import bootstrap
from entrypoints.web import create_app
from hashing.synthetic import photo_like_jpeg
from hotline.config import Settings
from hotline.runtime.embedded import EmbeddedRuntime
from hotline.storage.models import Assessment, AuditLog, BankEntry, Escalation
from hotline.storage.unit_of_work import SqlUnitOfWork
from hotline.web.auth import new_token
from schemas.notices import PoliceEscalation
from tests.integration.test_web_api import NoDns, Web, _serve

PAGES = 8
BASELINE = {"classification": "baseline", "age_group": "pre_pubescent", "act": "sexual_activity",
            "gender": "female", "site_type": "image_host", "commerciality": "non_commercial"}


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    tmp: Path = tmp_path_factory.mktemp("assessment-web")
    site = LoopbackSite("127.0.0.2").start()
    for n in range(PAGES):  # each page shows two images of its own
        site.add(f"/p{n}/a.jpg", "image/jpeg", photo_like_jpeg(256, 192, seed=8100 + 2 * n))
        site.add(f"/p{n}/b.jpg", "image/jpeg", photo_like_jpeg(256, 192, seed=8101 + 2 * n))
        site.add(f"/p{n}.html", "text/html",
                 f'<html><body><img src="/p{n}/a.jpg"><img src="/p{n}/b.jpg"></body></html>'.encode())
    hosting = tmp / "hosting.yaml"
    hosting.write_text(yaml.safe_dump({
        "hosts": {"img.hoster-a.test": ["127.0.0.2"]},
        "networks": [{"range": "127.0.0.2/32", "country": "NL", "asn": 64501, "hoster": "Hoster A B.V.",
                      "abuse": "abuse@hoster-a.test"}],
    }))
    questions = tmp / "questions.yaml"
    questions.write_text(yaml.safe_dump({"questions": [
        {"id": "victim_identifiable", "label": "Could the victim be identified?", "type": "yes_no",
         "required": True},
        {"id": "source", "label": "Where was it found?", "type": "choice", "choices": ["forum", "chat", "other"]},
        {"id": "remark", "label": "Remark for the police", "type": "text"},
    ]}))
    settings = Settings(database_url=f"sqlite:///{tmp / 'hotline.db'}", kafka_brokers=None, hosting_file=hosting,
                        partners_file=None, allow_private_fetch=True, hotline_name="Test Hotline",
                        fetch_timeout_seconds=5, assessment_questions_file=str(questions))
    system = bootstrap(settings, dns=NoDns())
    tokens = {role: new_token() for role in ("admin", "analyst", "senior", "police")}
    with system.sessions() as session:
        store = SqlUnitOfWork(session)
        for role, token in tokens.items():
            store.users.add(f"test-{role}", role, token)
        store.commit()
    runtime = EmbeddedRuntime(system.sessions, system.build_stages(), poll_seconds=0.02)
    runtime.start()
    port = free_port()
    server, thread = _serve(create_app(system), port)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        yield Web(client, system, f"http://img.hoster-a.test:{site.port}", tokens)
    finally:
        client.close()
        server.should_exit = True
        thread.join(5)
        runtime.stop()
        site.stop()
        system.engine.dispose()


def page_item(web: Web, n: int) -> tuple[str, list[dict[str, Any]]]:
    """Report page n; wait until it awaits an analyst; its item id and images (from the item)."""
    report_id = web.report(f"{web.site}/p{n}.html")
    item_id = web.wait_item(report_id, {"awaiting_assessment"})["items"][0]["item_id"]
    with web.system.sessions() as session:
        item = SqlUnitOfWork(session).items.get(item_id)
        assert item is not None and item.classification is not None
        images = [i for i in item.classification["images"] if i.get("sha256")]
    assert len(images) == 2
    return item_id, images


def post(web: Web, item_id: str, body: dict[str, Any], role: str = "analyst", change: bool = False) -> httpx.Response:
    path = f"/api/v1/items/{item_id}/assessment" + ("/change" if change else "")
    return web.client.post(path, headers=web.auth(role), json=body)


def rows(web: Web, model: Any, **where: Any) -> list[Any]:
    with web.system.sessions() as session:
        q = select(model)
        for k, v in where.items():
            q = q.where(getattr(model, k) == v)
        return list(session.scalars(q.order_by(model.id)).all())


ANSWERS = {"victim_identifiable": "no", "source": "forum"}


def test_per_image_decisions_escalate_with_each_images_classification(web: Web) -> None:
    item_id, images = page_item(web, 0)
    national = {"classification": "national", "age_group": "pubescent", "act": "lascivious_exhibition",
                "user_generated": True}
    r = post(web, item_id, {"images": [{"sha256": images[0]["sha256"], **BASELINE},
                                       {"url": images[1]["url"], **national}],
                            "answers": {**ANSWERS, "remark": "new series"}})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "escalated"
    escalation = rows(web, Escalation, item_id=item_id)[0]
    payload = PoliceEscalation.model_validate(escalation.payload)
    assert [(i.assessment.classification, i.assessment.xarf) for i in payload.images if i.assessment] == [
        ("baseline", "baseline"), ("national", "B2")]
    assert payload.classification is not None and payload.classification.category == "baseline"
    assert [(a.id, a.value) for a in payload.classification.answers] == [
        ("victim_identifiable", "no"), ("source", "forum"), ("remark", "new series")]
    assessment = rows(web, Assessment, item_id=item_id)[0]
    assert [i["xarf"] for i in assessment.images] == ["baseline", "B2"]
    entries = rows(web, BankEntry, source="analyst:test-analyst")
    assert {e.id for e in entries} >= set(assessment.bank_entry_ids)
    assert sorted(e.category for e in entries if e.id in assessment.bank_entry_ids) == ["baseline", "national"]


def test_not_illegal_images_close_and_doubtful_stays_for_a_second_look(web: Web) -> None:
    item_id, images = page_item(web, 1)
    r = post(web, item_id, {"images": [{"sha256": images[0]["sha256"], "classification": "doubtful"},
                                       {"sha256": images[1]["sha256"], "classification": "not_illegal",
                                        "site_type": "forum"}], "answers": ANSWERS})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "awaiting_assessment"
    assert "second look" in r.json()["reason"]
    assert rows(web, Escalation, item_id=item_id) == []
    r = post(web, item_id, {"images": [{"sha256": i["sha256"], "classification": "not_illegal"} for i in images],
                            "answers": ANSWERS})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "closed_not_illegal"
    assert [a.verdict for a in rows(web, Assessment, item_id=item_id)] == ["doubtful", "not_illegal"]


def test_errors_name_the_image_and_the_field(web: Web) -> None:
    item_id, images = page_item(web, 2)
    r = post(web, item_id, {"images": [
        {"sha256": images[0]["sha256"], "classification": "baseline", "age_group": "not_determined",
         "act": "sexual_activity"},
        {"sha256": images[1]["sha256"], "classification": "not_illegal", "gender": "male"}], "answers": ANSWERS})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert [d["loc"] for d in detail] == [["body", "images", 0, "age_group"], ["body", "images", 1, "gender"]]
    assert "baseline needs the age group" in detail[0]["msg"] and "image 1" in detail[0]["msg"]
    r = post(web, item_id, {"images": [{"sha256": images[0]["sha256"], **BASELINE}], "answers": ANSWERS})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "images"]
    assert "image 2" in r.json()["detail"][0]["msg"] and "has no decision" in r.json()["detail"][0]["msg"]
    r = post(web, item_id, {"images": [{"sha256": images[0]["sha256"], "classification": "illegal"}]})
    assert r.status_code == 422  # not one of ICCAM's values: pydantic says so
    r = post(web, item_id, {"verdict": "not_illegal", "images": [
        {"sha256": i["sha256"], **BASELINE} for i in images], "answers": ANSWERS})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "verdict"]
    # The questions: required, known ids, values they take.
    r = post(web, item_id, {"verdict": "not_illegal"})
    assert r.status_code == 422
    assert r.json()["detail"] == [{"loc": ["body", "answers", "victim_identifiable"],
                                   "msg": "answers.victim_identifiable: 'Could the victim be identified?' "
                                          "needs an answer"}]
    r = post(web, item_id, {"verdict": "not_illegal", "answers": {"victim_identifiable": "maybe", "source": "irc",
                                                                  "colour": "red"}})
    assert r.status_code == 422
    assert [d["loc"][-1] for d in r.json()["detail"]] == ["colour", "victim_identifiable", "source"]
    # Nothing of the refused attempts was kept; the old body still works.
    assert rows(web, Assessment, item_id=item_id) == []
    r = post(web, item_id, {"verdict": "not_illegal", "answers": {"victim_identifiable": False}})
    assert r.status_code == 200, r.text
    assert rows(web, Assessment, item_id=item_id)[0].answers == [
        {"id": "victim_identifiable", "label": "Could the victim be identified?", "value": "no"}]


def test_the_questions_are_listed(web: Web) -> None:
    r = web.client.get("/api/v1/assessment/questions", headers=web.auth("analyst"))
    assert r.status_code == 200
    assert [q["id"] for q in r.json()["questions"]] == ["victim_identifiable", "source", "remark"]


def test_a_senior_changes_illegal_to_not_illegal_before_the_takedown(web: Web) -> None:
    item_id, images = page_item(web, 3)
    r = post(web, item_id, {"images": [{"sha256": i["sha256"], **BASELINE} for i in images], "answers": ANSWERS})
    assert r.status_code == 200, r.text
    added = rows(web, Assessment, item_id=item_id)[0].bank_entry_ids
    assert len(added) == 2
    not_illegal = {"images": [{"sha256": i["sha256"], "classification": "not_illegal"} for i in images],
                   "answers": ANSWERS, "reason": "adult performer, age verified"}
    assert post(web, item_id, not_illegal, role="analyst", change=True).status_code == 403
    assert post(web, item_id, {**not_illegal, "reason": ""}, role="senior", change=True).status_code == 422
    r = post(web, item_id, not_illegal, role="senior", change=True)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "closed_not_illegal"
    assert sorted(r.json()["retired_bank_entries"]) == sorted(added)
    assert all(e.retired_at is not None for e in rows(web, BankEntry) if e.id in added)
    escalation = rows(web, Escalation, item_id=item_id)[0]
    assert escalation.state == "withdrawn"
    # The police can no longer release it.
    release = web.client.post(f"/api/v1/escalations/{escalation.id}/release", headers=web.auth("police"))
    assert release.status_code == 409
    changes = [a for a in rows(web, AuditLog, action="assessment_change") if a.subject == item_id]
    assert len(changes) == 1 and changes[0].actor == "test-senior"
    assert changes[0].detail.startswith("illegal baseline [") and "-> not_illegal [" in changes[0].detail
    assert "adult performer, age verified" in changes[0].detail
    assert [a.analyst for a in rows(web, Assessment, item_id=item_id)] == ["test-analyst", "test-senior"]
    assert rows(web, Assessment, item_id=item_id)[1].replaces_id == rows(web, Assessment, item_id=item_id)[0].id


def test_a_senior_changes_not_illegal_to_illegal_and_it_is_escalated(web: Web) -> None:
    item_id, images = page_item(web, 4)
    r = post(web, item_id, {"verdict": "not_illegal", "answers": ANSWERS})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "closed_not_illegal"
    r = post(web, item_id, {"images": [{"sha256": images[0]["sha256"], **BASELINE},
                                       {"sha256": images[1]["sha256"], "classification": "not_illegal"}],
                            "answers": ANSWERS, "reason": "missed the second frame"}, role="senior", change=True)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "escalated"
    escalation = rows(web, Escalation, item_id=item_id)[0]
    payload = PoliceEscalation.model_validate(escalation.payload)
    assert payload.classification is not None and payload.classification.changed_by == "test-senior"
    assert [i.assessment.classification for i in payload.images if i.assessment] == ["baseline", "not_illegal"]
    change = [a for a in rows(web, AuditLog, action="assessment_change") if a.subject == item_id]
    assert len(change) == 1 and change[0].detail.startswith("not_illegal -> illegal baseline [")
    # One bank entry: only the baseline image's hashes.
    assert len(rows(web, Assessment, item_id=item_id)[-1].bank_entry_ids) == 1
    # An item still awaiting an analyst has no decision to change.
    other, _ = page_item(web, 5)
    r = post(web, other, {"verdict": "not_illegal", "answers": ANSWERS, "reason": "x"}, role="senior", change=True)
    assert r.status_code == 409


def test_the_item_page_decides_a_pages_images_together_without_javascript(web: Web) -> None:
    item_id, images = page_item(web, 6)
    cookie = {"Cookie": f"hotline_token={web.tokens['analyst']}"}  # as the login form sets it
    origin = {**cookie, "Origin": str(web.client.base_url)}
    page = web.client.get(f"/analyst/items/{item_id}", headers=cookie)
    assert page.status_code == 200
    for marker in ('id="row-all"', 'id="row-0"', 'id="row-1"', 'name="same_for_all"', 'name="image-1-age_group"',
                   'name="answer-victim_identifiable"', 'name="answer-source"', 'name="answer-remark"'):
        assert marker in page.text, marker
    form = {"same_for_all": "1", "all-classification": "baseline", "all-age_group": "infant",
            "answer-victim_identifiable": "no"}
    refused = web.client.post(f"/analyst/items/{item_id}/decision", headers=origin, data=form)
    assert refused.status_code == 422
    assert "act: baseline needs the act" in refused.text
    assert 'value="infant" selected' in refused.text  # the form comes back as it was sent
    done = web.client.post(f"/analyst/items/{item_id}/decision", headers=origin,
                           data={**form, "all-act": "sexual_activity", "all-virtual": ""})
    assert done.status_code == 303, done.text
    assessment = rows(web, Assessment, item_id=item_id)[0]
    assert assessment.verdict == "illegal"
    assert [(i["sha256"], i["classification"], i["xarf"]) for i in assessment.images] == [
        (images[0]["sha256"], "baseline", "baseline"), (images[1]["sha256"], "baseline", "baseline")]
    assert assessment.answers == [{"id": "victim_identifiable", "label": "Could the victim be identified?",
                                   "value": "no"}]


def test_a_senior_changes_a_decision_on_the_item_page(web: Web) -> None:
    item_id, images = page_item(web, 7)
    r = post(web, item_id, {"images": [{"sha256": i["sha256"], **BASELINE} for i in images], "answers": ANSWERS})
    assert r.status_code == 200, r.text

    def headers(role: str) -> dict[str, str]:
        return {"Cookie": f"hotline_token={web.tokens[role]}", "Origin": str(web.client.base_url)}

    analyst_view = web.client.get(f"/analyst/items/{item_id}", headers=headers("analyst"))
    assert 'id="change-form"' not in analyst_view.text
    senior_view = web.client.get(f"/analyst/items/{item_id}", headers=headers("senior"))
    assert senior_view.status_code == 200
    assert 'id="change-form"' in senior_view.text and 'id="current-decision"' in senior_view.text
    assert "baseline/baseline" in senior_view.text
    form = {"same_for_all": "1", "all-classification": "not_illegal", "answer-victim_identifiable": "no"}
    refused = web.client.post(f"/analyst/items/{item_id}/change", headers=headers("analyst"),
                              data={**form, "reason": "x"})
    assert refused.status_code == 403
    no_reason = web.client.post(f"/analyst/items/{item_id}/change", headers=headers("senior"), data=form)
    assert no_reason.status_code == 422 and "reason: say why the decision changes" in no_reason.text
    done = web.client.post(f"/analyst/items/{item_id}/change", headers=headers("senior"),
                           data={**form, "reason": "drawings, not a real child"})
    assert done.status_code == 303, done.text
    [change] = [a for a in rows(web, AuditLog, action="assessment_change") if a.subject == item_id]
    assert change.actor == "test-senior" and "drawings, not a real child" in change.detail
    assert rows(web, Escalation, item_id=item_id)[0].state == "withdrawn"
