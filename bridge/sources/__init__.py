"""Upstream sources: each yields `Batch`es from a `Position` (see bridge.records)."""
