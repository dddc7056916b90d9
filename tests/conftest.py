"""Fixtures shared by the whole suite."""

from tests.kafka_fixtures import kafka, kafka_settings, topic_prefix

__all__ = ["kafka", "kafka_settings", "topic_prefix"]
