"""The assessment's logic on the in-memory unit of work: per-image decisions reach the bank,
the item's record and the copies; a senior's change within illegal replaces the bank entries
and the escalation's record; the hotline's questions file and its answers."""

from __future__ import annotations

import pytest

from hotline.kernel.states import ItemState
from hotline.storage.memory import MemoryUnitOfWork
from schemas.facts import ImageFacts
from schemas.items import ItemClassified
from schemas.notices import PoliceEscalation
from services.assessment import questions
from services.assessment.logic import assess, revise
from tests.unit.stagekit import make_item

SHA_A, SHA_B = "a" * 64, "b" * 64
BASELINE = {"classification": "baseline", "age_group": "infant", "act": "sexual_activity"}


def classified(*images: ImageFacts) -> ItemClassified:
    return ItemClassified(item_id="x", url="http://img.hoster-a.test/page.html", online=True, images=list(images),
                          route="assessment", reason="unknown material")


def two_images() -> ItemClassified:
    return classified(ImageFacts(url="http://img.hoster-a.test/a.jpg", sha256=SHA_A),
                      ImageFacts(url="http://img.hoster-a.test/b.jpg", sha256=SHA_B))


def test_only_illegal_images_join_the_bank_and_escalate_copies() -> None:
    uow = MemoryUnitOfWork()
    item_id = make_item(uow, ItemState.AWAITING_ASSESSMENT, two_images())
    # Another item shows image B (found not illegal) and is waiting: it is not escalated.
    other_b = make_item(uow, ItemState.AWAITING_ASSESSMENT, classified(ImageFacts(url="http://o.test/b.jpg",
                                                                                  sha256=SHA_B)))
    other_a = make_item(uow, ItemState.AWAITING_ASSESSMENT, classified(ImageFacts(url="http://o.test/a.jpg",
                                                                                  sha256=SHA_A)))
    uow.items.add_images(item_id, [(SHA_A, "http://img.hoster-a.test/a.jpg"), (SHA_B, "http://img.hoster-a.test/b.jpg")])
    uow.items.add_images(other_b, [(SHA_B, "http://o.test/b.jpg")])
    uow.items.add_images(other_a, [(SHA_A, "http://o.test/a.jpg")])
    out = assess(uow, item_id, verdict=None, category=None, analyst="ann",
                 images=[{"sha256": SHA_A, **BASELINE}, {"sha256": SHA_B, "classification": "not_illegal"}])
    escalation = out[0].message
    assert isinstance(escalation, PoliceEscalation)
    assert [c.item_id for c in escalation.copies] == [other_a]
    assert [(e.sha256, e.category) for e in uow.state.bank] == [(SHA_A, "baseline")]
    assessment = uow.assessments.latest(item_id)
    assert assessment is not None and assessment.bank_entry_ids is not None and len(assessment.bank_entry_ids) == 1
    item = uow.items.get(item_id)
    copy = uow.items.get(other_a)
    waiting = uow.items.get(other_b)
    assert item is not None and copy is not None and waiting is not None
    assert waiting.state == ItemState.AWAITING_ASSESSMENT and copy.state == ItemState.ESCALATED
    # The classification is on the item's record and on the copy's (the release builds from them).
    record = ItemClassified.model_validate(item.classification)
    assert [i.assessment.classification if i.assessment else None for i in record.images] == ["baseline", "not_illegal"]
    copy_record = ItemClassified.model_validate(copy.classification)
    assert copy_record.images[0].assessment is not None and copy_record.images[0].assessment.xarf == "baseline"


def test_a_senior_change_within_illegal_replaces_the_bank_entries_and_the_record() -> None:
    uow = MemoryUnitOfWork()
    item_id = make_item(uow, ItemState.AWAITING_ASSESSMENT, two_images())
    assess(uow, item_id, verdict=None, category=None, analyst="ann",
           images=[{"sha256": SHA_A, **BASELINE}, {"sha256": SHA_B, **BASELINE}])
    first = uow.assessments.latest(item_id)
    assert first is not None and first.bank_entry_ids is not None
    retired: list[int] = []
    revision = revise(uow, item_id, senior="sam", reason="second image is pubescent",
                      retire=lambda eid, why: retired.append(eid) is None,
                      verdict=None, category=None,
                      images=[{"sha256": SHA_A, **BASELINE},
                              {"sha256": SHA_B, "classification": "national", "age_group": "pubescent",
                               "act": "sexual_activity"}])
    assert retired == first.bank_entry_ids == revision.retired
    escalation = uow.escalations.get(f"pol-{item_id}")
    assert escalation is not None
    payload = PoliceEscalation.model_validate(escalation.payload)
    assert [i.assessment.xarf for i in payload.images if i.assessment] == ["baseline", "B1"]
    assert payload.classification is not None and payload.classification.changed_by == "sam"
    latest = uow.assessments.latest(item_id)
    assert latest is not None and latest.replaces_id == first.id and latest.analyst == "sam"
    item = uow.items.get(item_id)
    assert item is not None and item.state == ItemState.ESCALATED


QUESTIONS = """
questions:
  - {id: victim_identifiable, label: "Could the victim be identified?", type: yes_no, required: true}
  - {id: source, label: "Where?", type: choice, choices: [forum, chat]}
  - {id: remark, label: Remark, type: text}
"""


@pytest.mark.parametrize(("given", "answers", "errors"), [
    ({"victim_identifiable": "yes"}, [("victim_identifiable", "yes")], []),
    ({"victim_identifiable": True}, [("victim_identifiable", "yes")], []),
    ({"victim_identifiable": False, "source": "chat"}, [("victim_identifiable", "no"), ("source", "chat")], []),
    ({"victim_identifiable": "no", "remark": "  "}, [("victim_identifiable", "no")], []),
    ({}, None, ["victim_identifiable"]),
    ({"victim_identifiable": "perhaps"}, None, ["victim_identifiable"]),
    ({"victim_identifiable": "no", "source": "irc"}, None, ["source"]),
    ({"victim_identifiable": "no", "remark": "x" * 2001}, None, ["remark"]),
    ({"victim_identifiable": "no", "colour": "red"}, None, ["colour"]),
])
def test_answers(given: dict[str, object], answers: list[tuple[str, str]] | None, errors: list[str]) -> None:
    qs = questions.parse(QUESTIONS)
    if answers is not None:
        assert [(a.id, a.value) for a in questions.answers(qs, given)] == answers
    else:
        with pytest.raises(questions.AnswersInvalid) as info:
            questions.answers(qs, given)
        assert [q for q, _ in info.value.errors] == errors


@pytest.mark.parametrize(("text", "message"), [
    ("questions: [{id: a, label: A, type: choice}]", "a choice question needs choices"),
    ("questions: [{id: a, label: A, type: text, choices: [x]}]", "only a choice question has choices"),
    ("questions: [{id: a, label: A, type: text}, {id: a, label: B, type: text}]", "question ids must be unique: a"),
    ("questions: [{id: A-1, label: A, type: text}]", "String should match pattern"),
    ("questions: [{id: a, label: A, type: number}]", "Input should be 'yes_no', 'choice' or 'text'"),
])
def test_a_bad_questions_file_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        questions.parse(text)


def test_no_file_no_questions() -> None:
    assert questions.load(None) == ()


@pytest.mark.parametrize(("country", "topic"), [("NL", "notices.ntd"), ("DE", "forwards.partner")])
def test_the_release_carries_each_images_classification(country: str, topic: str) -> None:
    """The police release builds the notice (home) or the forward (a partner's country) from the
    item's record: each image's classification goes along, and the notice's X-ARF report uses it."""
    from schemas.facts import HostingFacts
    from schemas.notices import PoliceAction
    from services.escalate.release import decide

    uow = MemoryUnitOfWork()
    hosting = HostingFacts(host="img.hoster-a.test", ip="127.0.0.2", country=country, hoster="Hoster A",
                           abuse="abuse@hoster-a.test")
    item_id = make_item(uow, ItemState.AWAITING_ASSESSMENT, two_images().model_copy(update={"hosting": hosting}))
    out = assess(uow, item_id, verdict=None, category=None, analyst="ann",
                 images=[{"sha256": SHA_A, "classification": "national", "age_group": "pre_pubescent",
                          "act": "lascivious_exhibition"},
                         {"sha256": SHA_B, "classification": "not_illegal"}])
    escalation = out[0].message
    item = uow.items.get(item_id)
    assert isinstance(escalation, PoliceEscalation) and item is not None
    action = PoliceAction(action_id=f"{escalation.escalation_id}:release", escalation_id=escalation.escalation_id,
                          item_id=item_id, action="release", by="officer-1")
    takedown = decide(escalation, item, action, home_country="NL", partners={"DE": "Partner DE"},
                      hotline_name="Test Hotline")
    [message] = [o.message for o in takedown.messages if o.topic == topic]
    assert [(i.sha256, i.assessment.xarf if i.assessment else None) for i in message.images] == [
        (SHA_A, "A2"), (SHA_B, None)]
    if topic == "notices.ntd":
        from services.notify.xarf_report import build_report, validate

        report = build_report(message, "ntd@hotline.test", "Test Hotline")
        validate(report)
        assert report["classification"] == "A2" and len(report["evidence"]) == 1
