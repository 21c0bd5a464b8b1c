"""One frozen, versioned pydantic model per Kafka topic, declared next to its topic name and key.

``TOPICS`` is the single table every runtime, test and the JSON Schema export
read: topic name -> (model, key field). Consumers in other languages validate
against ``schemas/json/<topic>.json``.
"""

from schemas.base import SCHEMA_VERSION, Message
from schemas.topics import TOPICS, Topic, topic_for_model

__all__ = ["Message", "SCHEMA_VERSION", "TOPICS", "Topic", "topic_for_model"]
