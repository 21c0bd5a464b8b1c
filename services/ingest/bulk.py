"""Reports from a CSV file (``hotline reports import``): read row by row, refuse a bad row with
its line number and the reason, import the others.

What is refused per row (the rest of the file is still imported): a field over the csv
module's limit, bytes that are not UTF-8 (the file is opened with ``surrogateescape``, so
they arrive as surrogates and are found per field), a control character, an e-mail address
the API would refuse (``services.ingest.fields``). URLs are not checked here: ingest records
a reason for every URL it refuses, as for every channel. A file without a ``url`` column is
refused as a whole."""

from __future__ import annotations

import csv
from typing import TextIO

from hotline.operator_files import undecodable
from schemas.reports import ReportSubmitted
from services.ingest.fields import check_email, check_text

MAX_DESCRIPTION = 10_000


def _field_problem(column: str, value: str) -> str | None:
    if why := undecodable(value):
        return f"column {column}: {why}"
    try:
        if column == "reporter_email":
            check_email(value)
        else:
            check_text(value)
    except ValueError as exc:
        return f"column {column}: {exc}"
    if column == "description" and len(value) > MAX_DESCRIPTION:
        return f"column description: longer than {MAX_DESCRIPTION} characters"
    return None


def read_report_rows(stream: TextIO) -> tuple[list[ReportSubmitted], int, list[str]]:
    """(messages, URLs in them, refused rows as ``line N: reason``). Rows with the same
    ``report`` value form one report (its first row gives description and e-mail)."""
    reader = csv.reader(stream)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        return [], 0, ["the file is empty"]
    except csv.Error as exc:
        return [], 0, [f"line 1: not CSV: {exc}"]
    if "url" not in header:
        return [], 0, ["line 1: the CSV needs a 'url' column"]
    errors: list[str] = []
    grouped: dict[str, list[dict[str, str]]] = {}
    n = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit()
            errors.append(f"line {reader.line_num}: not CSV: {exc}")
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        n += 1
        line = reader.line_num
        if len(row) != len(header):
            errors.append(f"line {line}: expected {len(header)} fields ({', '.join(header)}), got {len(row)}")
            continue
        record = dict(zip(header, row, strict=True))
        problem = next((p for c, v in record.items() if (p := _field_problem(c, v))), None)
        if problem is None and not record["url"].strip():
            problem = "column url: empty"
        if problem is not None:
            errors.append(f"line {line}: {problem}")
            continue
        grouped.setdefault(record.get("report") or f"row-{n}", []).append(record)
    messages = [
        ReportSubmitted(
            channel="csv",
            urls=[r["url"].strip() for r in group],
            description=group[0].get("description") or None,
            reporter_email=check_email(group[0].get("reporter_email")),
        )
        for group in grouped.values()
    ]
    return messages, sum(len(g) for g in grouped.values()), errors
