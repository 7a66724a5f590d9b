"""Kafka: transactional producer, state store, topic admin, read-back."""
