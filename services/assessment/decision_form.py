"""The item page's decision form, read into what the API takes: one row per image (ICCAM's
fields, ``image-{n}-{field}``), a "same for all" row (``all-{field}``, applied to every image
when ``same_for_all`` is ticked: a page's images decided together, no JavaScript needed), the
old whole-item verdict for pages without images, and the hotline's questions
(``answer-{id}``). Pure: the form's fields in, decisions out; the rules stay in
``classification``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from schemas.facts import ImageFacts
from services.assessment import questions
from services.assessment.classification import (
    ACTS,
    AGE_GROUPS,
    CLASSIFICATIONS,
    COMMERCIALITIES,
    FLAGS,
    GENDERS,
    SITE_TYPES,
    needs_decision,
)
from services.assessment.questions import Question

# The select fields of a row, with their choices (empty: not given).
SELECTS: dict[str, tuple[str, ...]] = {
    "classification": CLASSIFICATIONS,
    "age_group": AGE_GROUPS,
    "gender": GENDERS,
    "act": ACTS,
    "site_type": SITE_TYPES,
    "commerciality": COMMERCIALITIES,
}


@dataclass
class DecisionForm:
    """What the form said: ``images`` (per-image decisions for the API's body; empty: the
    whole-item verdict applies), ``answers``, and the raw values to show the form again."""

    images: list[dict[str, Any]] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)


def read(form: Mapping[str, str], images: Sequence[ImageFacts], questions: Sequence[Question]) -> DecisionForm:
    """The decisions in ``form`` (a flat field → value mapping; ticked checkboxes are present)."""
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    same = values.get("same_for_all") == "1"
    rows: list[dict[str, Any]] = []
    for n, image in enumerate(images):
        if not needs_decision(image) and not values.get(f"image-{n}-classification"):
            continue
        prefix = "all" if same else f"image-{n}"
        row = _row(values, prefix)
        if row is None:
            continue
        row["sha256" if image.sha256 else "url"] = image.sha256 or image.url
        rows.append(row)
    answers = {q.id: values[f"answer-{q.id}"] for q in questions if values.get(f"answer-{q.id}", "").strip()}
    return DecisionForm(rows, answers, values)


def _row(values: Mapping[str, str], prefix: str) -> dict[str, Any] | None:
    classification = values.get(f"{prefix}-classification", "")
    if not classification:
        return None
    row: dict[str, Any] = {}
    for name in SELECTS:
        value = values.get(f"{prefix}-{name}", "")
        if value:
            row[name] = value
    for flag in FLAGS:
        row[flag] = values.get(f"{prefix}-{flag}") == "1"
    return row


async def form_fields(request: Request) -> dict[str, str]:
    """Every field of a posted form (the rows are named per image, so no fixed parameters)."""
    form = await request.form()
    return {k: v for k, v in form.multi_items() if isinstance(v, str)}


def decision_context(
    request: Request, images: Sequence[ImageFacts], *, current: Any = None, caller_role: str | None = None,
    decided: bool = False,
) -> dict[str, Any]:
    """What the decision form's template needs beside the item: the choices of each field,
    which images need a decision, the hotline's questions, and whether the caller may change
    the decision in force (``current``: the newest assessment; a senior analyst or an admin)."""
    return {
        "selects": SELECTS,
        "flags": FLAGS,
        "needs": [needs_decision(i) for i in images],
        "questions": questions.load(request.app.state.system.settings.assessment_questions_file),
        "current": current,
        "can_change": decided and current is not None and caller_role in CHANGE_ROLES,
    }


CHANGE_ROLES = ("senior", "admin")
