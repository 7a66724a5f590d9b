"""Faithful upstream simulators for the demo, tests and benchmarks."""
