"""Avro: schemas, wire formats (single-object, Schema Registry), fast encoders."""
