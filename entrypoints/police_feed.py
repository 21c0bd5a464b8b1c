"""``hotline police feed``: every ``escalations.police`` message as JSON lines.

On Kafka the liaison's feed is the topic itself, read from the beginning; embedded,
the same messages are kept in the ``escalations`` table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from hotline.config import Settings


def feed(settings: Settings, follow: bool = False, poll_seconds: float = 1.0) -> Iterator[str]:
    if settings.kafka_brokers:
        yield from _kafka_feed(settings, follow)
        return
    from entrypoints.bootstrap import bootstrap
    from hotline.storage.unit_of_work import SqlUnitOfWork

    system = bootstrap(settings)
    last = None
    seen: set[str] = set()
    while True:
        with system.sessions() as session:
            for row in SqlUnitOfWork(session).escalations.since(after=None if last is None else last):
                if row.id in seen:
                    continue
                seen.add(row.id)
                last = row.created_at if last is None or row.created_at > last else last
                yield json.dumps(row.payload, sort_keys=True)
        if not follow:
            return
        time.sleep(poll_seconds)


def _kafka_feed(settings: Settings, follow: bool) -> Iterator[str]:
    from kafka import KafkaConsumer, TopicPartition

    topic = settings.topic_prefix + "escalations.police"
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_brokers, enable_auto_commit=False, group_id=None)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        while True:
            batch = consumer.poll(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    yield record.value.decode()
            if not follow and all(consumer.position(tp) >= end[tp] for tp in tps):
                return
    finally:
        consumer.close()
