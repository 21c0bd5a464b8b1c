"""Classification as the network exchanges it, per image: ICCAM's fields, the rules that tie
them together, the item's verdict they add up to, and the mapping to X-ARF v4's
``classification`` that notices carry. Pure: no storage, no HTTP.

ICCAM (INHOPE's case system) records per image a classification (``baseline``: INTERPOL's
baseline criteria, illegal in virtually every country; ``national``: illegal under the
hosting country's law; ``doubtful``: the analyst cannot tell; ``not_illegal``), an age group,
gender, site type, commerciality and three flags. X-ARF (like the industry scheme) uses
``baseline`` or a letter for the age (A prepubescent, B pubescent) and a digit for what the
image shows (1 sexual activity, 2 lascivious exhibition): see :data:`XARF_CODES`.

The rules (:func:`problems`), each an error naming the image and the field:

- ``baseline`` is INTERPOL's: a real child (not ``virtual``), prepubescent (``infant`` or
  ``pre_pubescent``) and an ``act``;
- ``national`` needs the ``act`` (the digit of its X-ARF code); its age group may be
  unknown (``not_determined`` or missing: sent as B, the less serious letter);
- ``not_illegal`` and ``doubtful`` describe no child: no ``age_group``, ``gender`` or ``act``
  for ``not_illegal``; ``doubtful`` may note what the analyst saw but never produces a notice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from schemas.facts import (
    Act,
    AgeGroup,
    Classification,
    Commerciality,
    Gender,
    ImageClassification,
    ImageFacts,
    SiteType,
    XarfClassification,
)

CLASSIFICATIONS: tuple[str, ...] = get_args(Classification)
AGE_GROUPS: tuple[str, ...] = get_args(AgeGroup)
GENDERS: tuple[str, ...] = get_args(Gender)
ACTS: tuple[str, ...] = get_args(Act)
SITE_TYPES: tuple[str, ...] = get_args(SiteType)
COMMERCIALITIES: tuple[str, ...] = get_args(Commerciality)
FLAGS = ("virtual", "child_modelling", "user_generated")
ILLEGAL: frozenset[str] = frozenset({"baseline", "national"})
PREPUBESCENT: frozenset[str] = frozenset({"infant", "pre_pubescent"})

# X-ARF v4 content/csam ``classification`` (the enum of the schema the ``xarf`` package ships),
# most serious first.
XARF_VALUES: tuple[str, ...] = get_args(XarfClassification)
# (age letter, act) -> X-ARF code, for ``national`` images (``baseline`` is ``baseline``).
XARF_CODES: dict[tuple[str, str], str] = {
    ("A", "sexual_activity"): "A1",
    ("A", "lascivious_exhibition"): "A2",
    ("B", "sexual_activity"): "B1",
    ("B", "lascivious_exhibition"): "B2",
}

Verdict = Literal["illegal", "not_illegal", "doubtful"]


class ClassificationInvalid(ValueError):
    """A decision that breaks the rules; ``errors`` are ``(location, message)`` pairs, the
    location naming the image (its position in the request) and the field."""

    def __init__(self, errors: Sequence[tuple[tuple[str | int, ...], str]]) -> None:
        super().__init__("; ".join(m for _, m in errors))
        self.errors = list(errors)


def age_letter(age_group: str | None) -> str:
    """X-ARF's letter: A for prepubescent (infant, pre-pubescent), B otherwise (pubescent, or
    the age could not be determined: the less serious letter, never overstating)."""
    return "A" if age_group in PREPUBESCENT else "B"


def xarf_classification(c: ImageClassification) -> str | None:
    """The X-ARF ``classification`` of a (valid) image classification; None when the image
    gives no ground for a notice (doubtful, not illegal)."""
    if c.classification == "baseline":
        return "baseline"
    if c.classification == "national":
        if c.act is None:
            raise ClassificationInvalid([(("act",), "a national image needs the act for its X-ARF code")])
        return XARF_CODES[(age_letter(c.age_group), c.act)]
    return None


def problems(c: ImageClassification, where: str = "image") -> list[tuple[str, str]]:
    """Every rule ``c`` breaks, as ``(field, message)``; ``where`` names the image in messages."""
    out: list[tuple[str, str]] = []

    def bad(field: str, message: str) -> None:
        out.append((field, f"{where}: {field}: {message}"))

    if c.classification == "baseline":
        if c.age_group is None or c.age_group == "not_determined":
            bad("age_group", "baseline needs the age group (infant or pre_pubescent)")
        elif c.age_group not in PREPUBESCENT:
            bad("age_group", f"baseline is prepubescent material (INTERPOL's criteria), not {c.age_group}: "
                "classify it as national")
        if c.act is None:
            bad("act", "baseline needs the act (sexual_activity or lascivious_exhibition)")
        if c.virtual:
            bad("virtual", "baseline shows a real child: virtual material can only be national")
    elif c.classification == "national":
        if c.act is None:
            bad("act", "national needs the act (sexual_activity or lascivious_exhibition) for its X-ARF code")
    elif c.classification == "not_illegal":
        for field in ("age_group", "gender", "act"):
            if getattr(c, field) is not None:
                bad(field, f"not_illegal describes no child: leave {field} out")
    return out


def check(c: ImageClassification, where: str = "image") -> ImageClassification:
    """``c`` with its X-ARF value filled in; raises :class:`ClassificationInvalid`."""
    found = problems(c, where)
    if found:
        raise ClassificationInvalid([((field,), message) for field, message in found])
    return c.model_copy(update={"xarf": xarf_classification(c)})


def verdict_of(classifications: Sequence[ImageClassification]) -> Verdict:
    """The item's verdict: ``illegal`` when any image is baseline or national (one illegal
    image is enough to escalate and take the page down); ``not_illegal`` when every image is;
    otherwise (some doubtful, none illegal) ``doubtful``: the item stays with the analysts for
    a second look."""
    if not classifications:
        raise ClassificationInvalid([((), "no image was classified")])
    kinds = {c.classification for c in classifications}
    if kinds & ILLEGAL:
        return "illegal"
    if kinds == {"not_illegal"}:
        return "not_illegal"
    return "doubtful"


def category_of(classifications: Sequence[ImageClassification]) -> str | None:
    """The item's category as the bank and the old API know it: baseline when any image is."""
    kinds = {c.classification for c in classifications}
    if "baseline" in kinds:
        return "baseline"
    return "national" if "national" in kinds else None


class ImageDecision(BaseModel):
    """One image's decision as the API and the form send it: which image (its SHA-256 or its
    URL, as classify recorded them) and ICCAM's fields."""

    model_config = ConfigDict(extra="forbid")

    sha256: str | None = None
    url: str | None = None
    classification: Classification
    age_group: AgeGroup | None = None
    gender: Gender | None = None
    act: Act | None = None
    site_type: SiteType | None = None
    commerciality: Commerciality | None = None
    virtual: bool = False
    child_modelling: bool = False
    user_generated: bool = False

    def classification_fields(self) -> dict[str, Any]:
        return self.model_dump(exclude={"sha256", "url"})


@dataclass(frozen=True)
class Decided:
    """The outcome of :func:`resolve`: the item's images with their classification attached
    (undecided ones, e.g. already known by hash, unchanged), and the verdict they add up to."""

    images: list[ImageFacts]
    verdict: Verdict
    category: str | None

    @property
    def classifications(self) -> list[ImageClassification]:
        return [i.assessment for i in self.images if i.assessment is not None]


def needs_decision(image: ImageFacts) -> bool:
    """An image the analyst must decide: fetched (no error) and not already known by hash."""
    return image.error is None and image.match is None


def resolve(item_images: Sequence[ImageFacts], decisions: Sequence[ImageDecision | Mapping[str, Any]]) -> Decided:
    """Attach each decision to the item image it names (by SHA-256, else URL); every image that
    needs a decision must have one. Raises :class:`ClassificationInvalid` with every problem."""
    errors: list[tuple[tuple[str | int, ...], str]] = []
    chosen: dict[int, ImageClassification] = {}
    for n, raw in enumerate(decisions):
        where = f"images[{n}]"
        try:
            decision = raw if isinstance(raw, ImageDecision) else ImageDecision.model_validate(raw)
        except ValidationError as exc:
            for e in exc.errors():
                errors.append(((n, *e["loc"]), f"{where}: {'.'.join(map(str, e['loc']))}: {e['msg']}"))
            continue
        found = _find(item_images, decision)
        if not found:
            key = f"sha256 {decision.sha256}" if decision.sha256 else f"url {decision.url}"
            field = "sha256" if decision.sha256 else "url"
            if decision.sha256 is None and decision.url is None:
                errors.append(((n, "sha256"), f"{where}: sha256: name the image by its sha256 or its url"))
            else:
                errors.append(((n, field), f"{where}: {field}: the item has no image with {key}"))
            continue
        index = found[0]
        if index in chosen:
            errors.append(((n, "sha256"), f"{where}: image {index + 1} ({_name(item_images[index])}) is decided twice"))
            continue
        c = ImageClassification(**decision.classification_fields())
        for field, message in problems(c, f"{where} (image {index + 1}, {_name(item_images[index])})"):
            errors.append(((n, field), message))
        for same in found:  # the same image twice on the page is decided once
            chosen[same] = c
    for index, image in enumerate(item_images):
        if needs_decision(image) and index not in chosen:
            errors.append((("images",), f"image {index + 1} ({_name(image)}) has no decision"))
    if errors:
        raise ClassificationInvalid(errors)
    if not chosen:
        raise ClassificationInvalid([(("images",), "no image to decide: send the verdict instead")])
    images = [img.model_copy(update={"assessment": check(chosen[i])}) if i in chosen else img
              for i, img in enumerate(item_images)]
    classes = [chosen[i] for i in sorted(chosen)]
    return Decided(images, verdict_of(classes), category_of(classes))


def _find(images: Sequence[ImageFacts], d: ImageDecision) -> list[int]:
    """The positions of the image a decision names, and of every copy of it (same SHA-256)."""
    first = None
    if d.sha256 is not None:
        first = next((i for i, img in enumerate(images) if img.sha256 == d.sha256.lower()), None)
    elif d.url is not None:
        first = next((i for i, img in enumerate(images) if img.url == d.url), None)
    if first is None:
        return []
    sha = images[first].sha256
    return [first] + [i for i, img in enumerate(images) if i != first and sha is not None and img.sha256 == sha]


def _name(image: ImageFacts) -> str:
    return f"sha256 {image.sha256[:12]}…" if image.sha256 else image.url
