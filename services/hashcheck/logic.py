"""HashCheck logic: parse a hoster's batch, validate it in bulk, look it up, shape the answer.

No HTTP and no SQL here, so the rules (limits, error wording, what an answer
may reveal) are testable on their own and the route stays thin.

Why bulk and not a pydantic model per hash: a hoster sends up to 10,000
hashes per request and the API must answer >= 100,000 hashes/s on one core.
A model per hash costs several microseconds each; the loop below costs about
one, and the bank look-up is one vectorised index probe per hash type
(``BankMatcher.lookup_batch``).

What an answer may reveal is deliberately minimal: for each hash only
whether it is known. The distance to the nearest known hash goes only to
accounts the operator trusts (``HOTLINE_HASHCHECK_TRUSTED``): with distances, a
caller holding one near miss recovers the bank's exact PDQ in one request of 257
hashes (flip each bit, keep the flips that lower the distance). Never a
category, entry id, source or bank size: a hoster must not be able to learn
anything about the bank beyond "is this file known".
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from hashing.matcher import BankMatcher
from hashing.signals import SIGNAL_TYPES, InvalidHash, UnknownSignalType, get_signal_type
from services.ingest.hosts import accept_url
from services.ingest.urls import UrlRejected

MAX_BATCH = 10_000
"""Hashes per request. Larger batches must be split; the error says so."""

MAX_ERRORS_LISTED = 100
"""A batch of 10,000 bad hashes gets the first 100 reasons and a count, not a 2 MB error."""

TOP_LEVEL_FIELDS = ("hashes", "report_hits")

# The bulk path checks a whole type's values joined into one string against this (lengths are
# checked separately); anything else goes through hashing.signals' SignalType.validate, which
# normalises (strip, lowercase) or says why not.
_HEX_RUN = re.compile("[0-9a-fA-F]*")


class BatchRejected(ValueError):
    """The request cannot be answered as sent. Never retry unchanged: fix what ``errors`` says."""

    def __init__(self, status: int, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['reason']}" for e in errors))
        self.status = status
        self.errors = errors


@dataclass
class Batch:
    """A validated request: hashes grouped by type, positions kept to answer in input order."""

    size: int
    positions: dict[str, list[int]] = field(default_factory=dict)
    values: dict[str, list[str]] = field(default_factory=dict)
    codes: dict[str, np.ndarray] = field(default_factory=dict)
    """The same hashes as (n, bytes) arrays where the bulk path already made them."""
    report_urls: dict[str, str] = field(default_factory=dict)
    """Normalised hash value -> URL where the hoster found it (only used for known hashes)."""


@dataclass
class Answer:
    results: list[dict[str, Any]]
    known: int
    hit_urls: list[str]
    """URLs the hoster gave for hashes that turned out known (deduplicated, in input order)."""


def _error(field_name: str, reason: str) -> dict[str, str]:
    return {"field": field_name, "reason": reason}


def parse_batch(data: Any, operator_hosts: Collection[str] = ()) -> Batch:
    """Validate a decoded JSON body; raise ``BatchRejected`` naming every bad position.
    ``operator_hosts``: names of the hosting file, accepted in ``report_hits`` although not
    under a public suffix (intake's rule, ``services.ingest.hosts``)."""
    if not isinstance(data, dict):
        raise BatchRejected(422, [_error("body", 'expected a JSON object {"hashes": [...]}')])
    unknown = [k for k in data if k not in TOP_LEVEL_FIELDS]
    if unknown:
        hint = (
            "; the match radius is fixed by the hotline"
            if any("radius" in str(k) or "distance" in str(k) for k in unknown)
            else ""
        )
        raise BatchRejected(
            422,
            [_error(str(k), f"unknown field; allowed: {', '.join(TOP_LEVEL_FIELDS)}{hint}")
             for k in unknown],
        )
    hashes = data.get("hashes")
    if not isinstance(hashes, list):
        raise BatchRejected(422, [_error("hashes", "required: a list of {\"type\", \"value\"} objects")])
    if not hashes:
        raise BatchRejected(422, [_error("hashes", "the batch is empty: send 1 to 10000 hashes")])
    if len(hashes) > MAX_BATCH:
        raise BatchRejected(
            413,
            [_error("hashes", f"at most {MAX_BATCH} hashes per request, got {len(hashes)}; "
                              "split the batch")],
        )

    batch = _parse_bulk(hashes)
    if batch is None:
        batch = _parse_each(hashes)

    report_hits = data.get("report_hits")
    if report_hits is not None:
        batch.report_urls = _parse_report_hits(report_hits, batch, operator_hosts)
    return batch


def _parse_bulk(hashes: list[Any]) -> Batch | None:
    """The common case, validated a whole hash type at a time with C-speed built-ins.

    Returns ``None`` as soon as anything is unusual (a type spelt differently, a value with
    blanks, an extra field, a wrong length, a non-hex digit): ``_parse_each`` then goes
    through the batch one hash at a time and says exactly what is wrong where.
    """
    if set(map(len, hashes)) != {2}:  # every entry has exactly two fields (or is no dict)
        return None
    try:
        kinds = [h["type"] for h in hashes]
        values = [h["value"] for h in hashes]
    except (TypeError, KeyError):
        return None
    batch = Batch(size=len(hashes))
    try:
        distinct = set(kinds)
    except TypeError:  # a "type" that is a list or an object
        return None
    for kind in distinct:
        if type(kind) is not str or kind not in SIGNAL_TYPES:
            return None
        if len(distinct) == 1:
            positions, group = list(range(len(values))), values
        else:
            positions = [i for i, k in enumerate(kinds) if k == kind]
            group = [values[i] for i in positions]
        try:
            joined = "".join(group)
        except TypeError:  # a value that is not a string
            return None
        if set(map(len, group)) != {SIGNAL_TYPES[kind].hex_length} or not _HEX_RUN.fullmatch(joined):
            return None
        if not joined.islower() and any(c in joined for c in "ABCDEF"):
            group = [v.lower() for v in group]
            joined = joined.lower()
        batch.positions[kind] = positions
        batch.values[kind] = group
        batch.codes[kind] = np.frombuffer(bytes.fromhex(joined), dtype=np.uint8).reshape(
            len(group), SIGNAL_TYPES[kind].byte_length
        )
    return batch


def _parse_each(hashes: list[Any]) -> Batch:
    """One hash at a time: accepts what ``SignalType.validate`` normalises (case, blanks) and
    names every bad position (the first ``MAX_ERRORS_LISTED``) with the reason."""
    batch = Batch(size=len(hashes))
    errors: list[dict[str, str]] = []
    n_errors = 0
    for i, item in enumerate(hashes):
        problem = _slow_check(item)
        if isinstance(problem, tuple):
            kind, value = problem
            batch.positions.setdefault(kind, []).append(i)
            batch.values.setdefault(kind, []).append(value)
            continue
        n_errors += 1
        if len(errors) < MAX_ERRORS_LISTED:
            errors.append(_error(f"hashes[{i}]{problem[0]}", problem[1]))
    if n_errors:
        if n_errors > len(errors):
            errors.append(_error("hashes", f"{n_errors - len(errors)} more invalid hashes not listed"))
        raise BatchRejected(422, errors)
    return batch


def _slow_check(item: Any) -> tuple[str, str] | list[str]:
    """(type, normalised value) for an entry the fast path did not take, or [field, reason]."""
    if not isinstance(item, dict):
        return ["", 'expected an object {"type": ..., "value": ...}']
    extra = sorted(str(k) for k in item if k not in ("type", "value"))
    if extra:
        return [f".{extra[0]}", "unknown field; each hash has only \"type\" and \"value\""]
    kind = item.get("type")
    if not isinstance(kind, str):
        return [".type", f"required: one of {', '.join(SIGNAL_TYPES)}"]
    try:
        signal = get_signal_type(kind)
    except UnknownSignalType as exc:
        return [".type", str(exc)]
    if "value" not in item:
        return [".value", "required"]
    try:
        return signal.name, signal.validate(item["value"])
    except InvalidHash as exc:
        return [".value", str(exc)]


def _parse_report_hits(report_hits: Any, batch: Batch, operator_hosts: Collection[str]) -> dict[str, str]:
    if not isinstance(report_hits, dict):
        raise BatchRejected(
            422, [_error("report_hits", "expected an object mapping hash value -> URL")]
        )
    if len(report_hits) > MAX_BATCH:
        raise BatchRejected(
            413, [_error("report_hits", f"at most {MAX_BATCH} entries, got {len(report_hits)}")]
        )
    in_batch = {v for values in batch.values.values() for v in values}
    urls: dict[str, str] = {}
    errors: list[dict[str, str]] = []
    for key, url in report_hits.items():
        value = key.strip().lower()
        where = f"report_hits[{key!r}]"
        if value not in in_batch:
            errors.append(_error(where, "this hash is not in this request's hashes"))
        elif not isinstance(url, str):
            errors.append(_error(where, "expected the URL where the file is served, as a string"))
        else:
            try:
                accept_url(url, operator_hosts)
            except UrlRejected as exc:
                errors.append(_error(where, f"{url!r}: {exc.reason}"))
                continue
            urls[value] = url
        if len(errors) >= MAX_ERRORS_LISTED:
            break
    if errors:
        raise BatchRejected(422, errors)
    return urls


def check(matcher: BankMatcher, batch: Batch, *, reveal_distance: bool = False) -> Answer:
    """Answer every hash of ``batch`` in input order, with nothing but known (and the distance,
    for a trusted caller: ``reveal_distance``)."""
    results: list[dict[str, Any]] = [{}] * batch.size
    known = 0
    hit_values: set[str] = set()
    for kind, positions in batch.positions.items():
        values = batch.values[kind]
        distances = matcher.distances_batch(kind, batch.codes.get(kind, values))
        for pos, value, distance in zip(positions, values, distances, strict=True):
            if distance is not None:
                known += 1
                hit_values.add(value)
            result = {"type": kind, "value": value, "known": distance is not None}
            if reveal_distance:
                result["distance"] = distance
            results[pos] = result
    hit_urls: list[str] = []
    if batch.report_urls and hit_values:
        seen: set[str] = set()
        for value, url in batch.report_urls.items():
            if value in hit_values and url not in seen:
                seen.add(url)
                hit_urls.append(url)
    return Answer(results, known, hit_urls)


def iso_week(at: datetime) -> str:
    """The ISO week ``at`` falls in, as stored in ``HashCheckStat.week`` (e.g. ``2026-W48``)."""
    year, week, _ = at.isocalendar()
    return f"{year}-W{week:02d}"


def chart(series: Mapping[str, int], *, width: int = 640, height: int = 200) -> dict[str, Any]:
    """Geometry of a bar chart (one bar per label), computed here so the page needs no JS.

    Returns ``{"width", "height", "bars": [{"x", "y", "w", "h", "label", "value"}], "max"}``
    in SVG user units; the template only draws rectangles and text.
    """
    top, bottom, left = 16, 36, 8
    labels = list(series)
    peak = max(series.values(), default=0)
    slot = (width - left) / max(len(labels), 1)
    bar_w = max(min(slot * 0.7, 60), 2)
    plot_h = height - top - bottom
    bars = []
    for i, label in enumerate(labels):
        value = series[label]
        h = 0.0 if peak == 0 else plot_h * value / peak
        x = left + i * slot + (slot - bar_w) / 2
        bars.append({"x": round(x, 1), "y": round(top + plot_h - h, 1), "w": round(bar_w, 1),
                     "h": round(h, 1), "label": label, "value": value, "cx": round(x + bar_w / 2, 1)})
    return {"width": width, "height": height, "bars": bars, "max": peak, "base": top + plot_h}
