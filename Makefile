# metermesh: one Makefile for setting up, running, testing, benchmarking and linting.
# Everything runs from .venv at the repository root, created by `make setup` on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROTOS := $(shell find protos -name '*.proto')

.PHONY: setup run test bench bench-ingest bench-anomaly bench-billing bench-forecast bench-gateway eval-anomaly eval-forecast web-gen web-gen-check web web-check protos protos-check lint k8s-validate clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "metermesh needs Python 3.11 or newer (found %s): set PYTHON=python3.11" % sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

run: setup
	$(VENV)/bin/metermesh up --simulate

test: setup
	$(PY) -m pytest

bench: bench-ingest bench-anomaly bench-billing bench-forecast bench-gateway

# Three shapes of traffic: a head-end catching up (10 intervals per meter per batch), live traffic
# (one interval of 10,000 meters per batch) and consumption-only meters.
bench-ingest: setup
	$(PY) -m bench.ingest --label catch-up --meters 1000 --write BENCHMARKS.md
	$(PY) -m bench.ingest --label live --meters 10000 --write BENCHMARKS.md
	$(PY) -m bench.ingest --label energy-only --meters 1000 --energy-only --write BENCHMARKS.md

# Scoring throughput of the whole detector stack, and ingest-ack-to-WatchAlerts latency under load.
bench-anomaly: setup
	$(PY) -m bench.anomaly --write BENCHMARKS.md

# A billing cycle over 100,000 meters with a month of hourly rollups.
bench-billing: setup
	$(PY) -m bench.billing --write BENCHMARKS.md

# Offline evaluation of the detectors on the shared real data (../shared/data): LEAD1.0 labelled
# buildings and faults injected into the UCI household series.
eval-anomaly: setup
	$(PY) -m bench.eval_anomaly --write BENCHMARKS.md

# Training time for the shared household set, and inference for 10,000 meters x 24 hours.
bench-forecast: setup
	$(PY) -m bench.forecast --write BENCHMARKS.md

# Unary calls per second through the gRPC-web gateway beside the same call direct to the service.
bench-gateway: setup
	$(PY) -m bench.gateway --write BENCHMARKS.md

# Backtest (BuildingsBench protocol) of the LSTM beside the persistence baselines on ../shared/data.
eval-forecast: setup
	$(PY) -m bench.eval_forecast --write BENCHMARKS.md

protos: setup
	$(PY) tools/gen_protos.py

# CI: generated code must match the contracts (regenerate, then fail on any difference).
protos-check: protos
	@git diff --exit-code -- gen/ && test -z "$$(git status --porcelain -- gen/)" \
		|| (echo "gen/ is stale: run 'make protos' and commit the result" >&2; exit 1)

node_modules/.bin/buf: package.json package-lock.json
	@# `npm install`, not `npm ci`: the lock holds only the Linux builds of buf (the registry this
	@# project can reach has no others), which `npm ci` refuses as out of sync.
	npm install --no-audit --no-fund --loglevel=error
	@touch $@

# TypeScript messages and service descriptors for the dashboard and the gRPC-web tests (web/gen).
web-gen: node_modules/.bin/buf
	node_modules/.bin/buf generate

web-gen-check: web-gen
	@git diff --exit-code -- web/gen/ && test -z "$$(git status --porcelain -- web/gen/)" \
		|| (echo "web/gen/ is stale: run 'make web-gen' and commit the result" >&2; exit 1)

# The dashboard (web/src, web/index.html, web/style.css) type-checked, then bundled by esbuild into
# gateway/static/, which the gateway serves at /. The output is committed, so web-check rebuilds it
# and fails when it differs from what is committed.
web: node_modules/.bin/buf
	node_modules/.bin/tsc -p web
	node web/build.mjs

web-check: web
	@git diff --exit-code -- gateway/static/ && test -z "$$(git status --porcelain -- gateway/static/)" \
		|| (echo "gateway/static/ is stale: run 'make web' and commit the result" >&2; exit 1)

lint: setup node_modules/.bin/buf
	node_modules/.bin/buf lint
	$(VENV)/bin/ruff check services gateway tests tools bench
	$(VENV)/bin/ruff format --check services gateway tests tools bench

# Renders every overlay under k8s/overlays (Python only: no kubectl needed), validates the objects
# against the Kubernetes schemas and our policy (probes, resources, securityContext, PDBs, pinned images).
k8s-validate: setup
	$(PY) tools/k8s_validate.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache
