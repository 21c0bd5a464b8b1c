"""A hotline's own questions on every assessment (as SCART has), beside ICCAM's fields: read
from a YAML file (``HOTLINE_ASSESSMENT_QUESTIONS_FILE``), shown on the item page, checked by
the API, stored with the assessment and sent to the police with the escalation.

The file::

    questions:
      - id: victim_identifiable        # letters, digits, underscore
        label: Could the victim be identified?
        type: yes_no                   # yes_no | choice | text
        required: true
      - id: source
        label: Where was it found?
        type: choice
        choices: [forum, chat, other]
      - id: remark
        label: Remark for the police
        type: text

Answers are strings: ``yes``/``no`` for yes/no questions (``true``/``false`` are accepted from
JSON), one of the ``choices``, or free text (at most 2,000 characters).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.notices import Answer

TEXT_LIMIT = 2_000


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    label: str = Field(min_length=1, max_length=300)
    type: Literal["yes_no", "choice", "text"]
    required: bool = False
    choices: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _choices(self) -> Question:
        if self.type == "choice" and not self.choices:
            raise ValueError(f"question {self.id}: a choice question needs choices")
        if self.type != "choice" and self.choices:
            raise ValueError(f"question {self.id}: only a choice question has choices")
        return self


class QuestionsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    questions: list[Question] = []

    @model_validator(mode="after")
    def _unique(self) -> QuestionsFile:
        ids = [q.id for q in self.questions]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"question ids must be unique: {', '.join(duplicates)}")
        return self


class AnswersInvalid(ValueError):
    """``errors``: ``(question id, message)`` pairs."""

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        super().__init__("; ".join(m for _, m in errors))
        self.errors = list(errors)


def parse(text: str) -> tuple[Question, ...]:
    return tuple(QuestionsFile.model_validate(yaml.safe_load(text) or {}).questions)


def load(path: str | None) -> tuple[Question, ...]:
    """The questions of the file at ``path`` (none when unset); read again when it changes."""
    if not path:
        return ()
    return _load(path, os.stat(path).st_mtime_ns)


@lru_cache(maxsize=4)
def _load(path: str, _mtime: int) -> tuple[Question, ...]:
    return parse(Path(path).read_text(encoding="utf-8"))


def answers(questions: Sequence[Question], given: Mapping[str, object]) -> list[Answer]:
    """The answers in the questions' order; raises :class:`AnswersInvalid` naming each question
    that is unknown, required and missing, or answered with a value it does not take."""
    known = {q.id: q for q in questions}
    errors: list[tuple[str, str]] = [(k, f"answers.{k}: no such question") for k in given if k not in known]
    out: list[Answer] = []
    for q in questions:
        raw = given.get(q.id)
        value = _normal(raw)
        if value is None:
            if q.required:
                errors.append((q.id, f"answers.{q.id}: {q.label!r} needs an answer"))
            continue
        if q.type == "yes_no" and value not in ("yes", "no"):
            errors.append((q.id, f"answers.{q.id}: answer yes or no, not {value!r}"))
        elif q.type == "choice" and value not in q.choices:
            errors.append((q.id, f"answers.{q.id}: choose one of {', '.join(q.choices)}, not {value!r}"))
        elif q.type == "text" and len(value) > TEXT_LIMIT:
            errors.append((q.id, f"answers.{q.id}: at most {TEXT_LIMIT} characters"))
        else:
            out.append(Answer(id=q.id, label=q.label, value=value))
    if errors:
        raise AnswersInvalid(errors)
    return out


def _normal(raw: object) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, bool):
        return "yes" if raw else "no"
    value = str(raw).strip()
    return value or None
