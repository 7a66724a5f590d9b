# The two commands: `make test` and `make demo`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: test lint demo proto bench bench-peer clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check bridge tests bench tools
	$(BIN)/ruff format --check bridge tests bench tools
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/polybridge demo

proto: $(STAMP)
	$(BIN)/python tools/gen_proto.py

bench: $(STAMP)
	$(BIN)/python -m bench.sim_throughput
	$(BIN)/python -m bench.mapping_throughput
	$(BIN)/python -m bench.dropcopy_e2e
	$(BIN)/python -m bench.predexon_e2e

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
