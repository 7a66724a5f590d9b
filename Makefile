# The two commands: `make test` and `make demo`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test test-fast lint promtool demo proto bench bench-peer clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check bridge tests bench tools
	$(BIN)/ruff format --check bridge tests bench tools
	$(BIN)/mypy

# Three workers, each with its own Apache Kafka: most tests wait on brokers, simulators and
# subprocesses, so three share two cores well. tests/conftest.py orders the longest tests
# first and xdist deals them out one at a time. The tests that measure hand-over times
# against their targets (marked `timed`) run afterwards, on their own: beside other tests a
# 2-core machine measures the load, not the bridge (18 s for a 15 s hand-over once; side by
# side with each other, 14.6 s). Running them alongside the others niced was tried: it
# made the whole run longer. -rP prints the hand-over times they measured. A restart-time
# test whose bound is several times what it measures under load (static membership: 12 s
# against 2-4 s) runs with the rest.
test: lint promtool
	$(BIN)/pytest -q -n 3 --maxschedchunk 1 -m "not timed" --durations=30
	$(BIN)/pytest -q -m timed --durations=5 -rP

# The unit tests alone (no Kafka, no simulators, no subprocesses): under a minute.
test-fast: $(STAMP)
	$(BIN)/pytest -q tests/unit

# promtool and prometheus, for the alerting-rule tests (tests/unit/test_alert_rules.py,
# tests/integration/test_prometheus_alerts.py): Debian's `prometheus` package, installed with
# apt where missing. Its service is not started: while installing, a policy-rc.d that denies
# every start is put in place unless one exists (Docker images have one); the tests start
# their own Prometheus on a free loopback port.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

promtool:
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then \
		exit 0; \
	fi; \
	set -e; policy=/usr/sbin/policy-rc.d; \
	if [ ! -e $$policy ]; then \
		trap '$(SUDO) rm -f /usr/sbin/policy-rc.d' EXIT; \
		printf '#!/bin/sh\nexit 101\n' | $(SUDO) tee $$policy >/dev/null; \
		$(SUDO) chmod 755 $$policy; \
	fi; \
	$(SUDO) apt-get update -q; \
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		prometheus; \
	command -v promtool >/dev/null && command -v prometheus >/dev/null

# `make demo REGISTRY=1`: the bridge writes with Schema Registry framing through a local
# Schema Registry (Apicurio, resolved by kafka/pom.xml like the broker) instead of Avro
# single-object encoding.
demo: $(STAMP)
	$(BIN)/polybridge demo $(if $(REGISTRY),--registry)

proto: $(STAMP)
	$(BIN)/python tools/gen_proto.py

bench: $(STAMP)
	$(BIN)/python -m bench.sim_throughput
	$(BIN)/python -m bench.mapping_throughput
	$(BIN)/python -m bench.dropcopy_e2e
	$(BIN)/python -m bench.predexon_e2e
	$(BIN)/python -m bench.predexon_reconnect
	$(BIN)/python -m bench.scaling
	$(BIN)/python -m bench.rest_backfill

# Quix Streams needs confluent-kafka < 2.13 (the bridge uses 2.16): its own venv, not in pyproject.
QUIX_VENV := .venv-quix
QUIX_STAMP := $(QUIX_VENV)/.installed-stamp

$(QUIX_STAMP):
	$(PYTHON) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/pip install --quiet 'quixstreams==3.28.1' 'confluent-kafka<2.13' \
		grpcio protobuf fastavro
	touch $(QUIX_STAMP)

bench-peer: $(STAMP) $(QUIX_STAMP)
	$(BIN)/python -m bench.quix_peer

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
