"""``hotline police feed`` and ``hotline police export``: the police liaison's read of the
escalations.

**feed** prints every ``escalations.police`` message as JSON lines (one per message, the message
itself) and exits; ``--follow`` keeps waiting for more. Where to start:

- embedded (no broker), the messages are the ``escalations`` table: ``--from-offset N`` skips
  the first N escalations (a global position: 0 is the first escalation ever, in creation order,
  so the number of lines a previous run printed is where the next one resumes);
- on Kafka the feed is the topic itself, read from the beginning of every partition; ``--from-offset
  N`` starts every partition at offset N, ``--from-offset P:N[,P:N...]`` starts partition P at N
  (partitions not named start at their beginning);
- ``--since TIME`` (ISO 8601; no zone means UTC): only escalations from that time on (embedded:
  created at or after it; Kafka: ``offsets_for_times``, the first offset of each partition whose
  timestamp is at or after it). With both, each partition starts at the later of the two.

**export** writes a period's escalations (created in ``[--from, --to)``), oldest first, with
their current state and the police's actions, as CSV (:data:`EXPORT_COLUMNS`) or a JSON array of
the same objects the ``GET /api/v1/escalations`` route returns. It reads the database (the
escalations table is written by the web app on both runtimes). An export is audited.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from hotline.config import Settings

# The CSV columns of ``hotline police export``, in order (README, "Police").
EXPORT_COLUMNS = (
    "escalation_id", "item_id", "url", "state", "escalated_at", "release_due_at",
    "received_at", "received_by", "held_at", "held_by", "hold_reason", "released_at", "released_by",
    "outcome", "category", "analyst", "country", "hoster", "ip", "asn", "abuse", "first_seen", "last_seen",
    "report_ids", "sha256", "md5", "pdq",
)


def parse_time(value: str) -> datetime:
    """ISO 8601; a time without a zone is UTC."""
    at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def parse_offsets(value: str | None) -> int | dict[int, int] | None:
    """``N`` (every partition, or the global position embedded) or ``P:N,P:N``."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if ":" not in value:
        n = int(value)
        if n < 0:
            raise ValueError("an offset is never negative")
        return n
    offsets: dict[int, int] = {}
    for part in value.split(","):
        partition, _, offset = part.partition(":")
        offsets[int(partition)] = int(offset)
        if offsets[int(partition)] < 0:
            raise ValueError("an offset is never negative")
    return offsets


def _sessions(settings: Settings) -> Any:
    from hotline.storage.engine import make_engine, make_sessionmaker, migrate

    migrate(settings.database_url)
    return make_sessionmaker(make_engine(settings.database_url))


def feed(
    settings: Settings, follow: bool = False, poll_seconds: float = 1.0, from_offset: str | None = None,
    since: datetime | None = None,
) -> Iterator[str]:
    offsets = parse_offsets(from_offset)
    if settings.kafka_brokers:
        yield from _kafka_feed(settings, follow, offsets, since)
        return
    if isinstance(offsets, dict):
        raise ValueError("embedded, --from-offset is one global position N (P:N is for Kafka partitions)")
    from hotline.storage.unit_of_work import SqlUnitOfWork

    sessions = _sessions(settings)
    skip = offsets or 0
    seen: set[str] = set()
    position = 0
    while True:
        with sessions() as session:
            for row in SqlUnitOfWork(session).escalations.since(after=None):
                if row.id in seen:
                    continue
                seen.add(row.id)
                position += 1
                if position <= skip or (since is not None and row.created_at < since):
                    continue
                yield json.dumps(row.payload, sort_keys=True)
        if not follow:
            return
        time.sleep(poll_seconds)


def _kafka_feed(settings: Settings, follow: bool, offsets: int | dict[int, int] | None,
                since: datetime | None) -> Iterator[str]:
    from kafka import KafkaConsumer, TopicPartition

    topic = settings.topic_prefix + "escalations.police"
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_brokers, enable_auto_commit=False, group_id=None)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return
        consumer.assign(tps)
        begin, end = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
        by_time: dict[Any, Any] = {}
        if since is not None:
            by_time = consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
        for tp in tps:
            start = begin[tp]
            if isinstance(offsets, int):
                start = max(start, offsets)
            elif isinstance(offsets, dict) and tp.partition in offsets:
                start = max(start, offsets[tp.partition])
            if since is not None:
                found = by_time.get(tp)
                start = max(start, found.offset if found is not None else end[tp])
            consumer.seek(tp, min(start, end[tp]))
        while True:
            batch = consumer.poll(timeout_ms=200)
            for records in batch.values():
                for record in records:
                    yield record.value.decode()
            if not follow and all(consumer.position(tp) >= end[tp] for tp in tps):
                return
    finally:
        consumer.close()


def export_rows(settings: Settings, start: datetime, end: datetime, who: str = "cli") -> list[dict[str, Any]]:
    """The escalations created in ``[start, end)``, oldest first, as the police API shows them;
    the export is audited (who, which escalations)."""
    from hotline.storage.unit_of_work import SqlUnitOfWork
    from services.police.logic import describe, shown

    sessions = _sessions(settings)
    with sessions() as session:
        store = SqlUnitOfWork(session)
        rows = list(reversed(store.escalations.newest(10**9, start=start, end=end)))
        shown(store, who, rows, f"hotline police export {start.isoformat()} {end.isoformat()}")
        store.commit()
        return [describe(r) for r in rows]


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        hosting = r.get("hosting") or {}
        cls = r.get("classification") or {}
        images = [i for i in r.get("images") or [] if not i.get("error")]
        writer.writerow({
            **{k: r.get(k) or "" for k in EXPORT_COLUMNS if k in r},
            "category": cls.get("category", ""), "analyst": cls.get("analyst", ""),
            "country": hosting.get("country") or "", "hoster": hosting.get("hoster") or "",
            "ip": hosting.get("ip") or "", "asn": hosting.get("asn") or "", "abuse": hosting.get("abuse") or "",
            "report_ids": " ".join(r.get("report_ids") or []),
            "sha256": " ".join(i.get("sha256") or "" for i in images),
            "md5": " ".join(i.get("md5") or "" for i in images),
            "pdq": " ".join(i.get("pdq") or "" for i in images),
        })
    return out.getvalue()
