"""Smoke tests: the real services used by the integration tests answer."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.integration


def test_kafka_round_trip_kafka_python(kafka_brokers: str, unique_topic_prefix: str) -> None:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from kafka.admin import NewTopic

    topic = f"{unique_topic_prefix}.smoke"
    servers = kafka_brokers.split(",")

    admin = KafkaAdminClient(bootstrap_servers=servers)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        admin.close()

    producer = KafkaProducer(bootstrap_servers=servers)
    try:
        producer.send(topic, key=b"k", value=b"hello").get(timeout=30)
        producer.flush()
    finally:
        producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=servers,
        group_id=f"{unique_topic_prefix}.group",
        auto_offset_reset="earliest",
        consumer_timeout_ms=30000,
    )
    try:
        received = None
        for message in consumer:
            received = (message.key, message.value)
            break
    finally:
        consumer.close()
    assert received == (b"k", b"hello")


def test_kafka_round_trip_aiokafka(kafka_brokers: str, unique_topic_prefix: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = f"{unique_topic_prefix}.smoke-aio"

    async def round_trip() -> bytes:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_brokers)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"hello-aio")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_brokers,
            group_id=f"{unique_topic_prefix}.group-aio",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            message = await asyncio.wait_for(consumer.getone(), timeout=30)
        finally:
            await consumer.stop()
        return message.value

    assert asyncio.run(round_trip()) == b"hello-aio"


def test_postgres_select_1(pg_url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
            assert conn.execute(sa.text("SELECT current_database()")).scalar_one()
    finally:
        engine.dispose()
