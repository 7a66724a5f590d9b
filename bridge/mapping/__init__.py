"""Upstream message -> Avro record, one module per upstream."""
