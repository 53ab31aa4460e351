# The one gate: `make test` is what a newcomer runs and what CI runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Two workers, each test file (and the chaos and Docker tests as two blocks) on one of them:
# tests/conftest.py says why. `make test PYTEST_ARGS=` runs everything in one process.
PYTEST_ARGS ?= -n 2

.PHONY: help venv run test lint proto bench bench-peers sim-soak chaos-full chaos-membership clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)  ## create .venv and install tidelog with its dev tools

run: $(STAMP)  ## start a local 3-node cluster in the foreground (Ctrl-C stops it)
	$(VENV)/bin/tidelog cluster up --nodes 3

test: $(STAMP)  ## lint, then the whole test suite
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check .

proto: $(STAMP)  ## regenerate the Python code from proto/*.proto
	$(PY) -m tidelog.proto.regenerate

bench: $(STAMP)  ## run every benchmark script and print its figures (no assertions)
	$(PY) benchmarks/storage_bench.py
	$(PY) benchmarks/raft_bench.py
	$(PY) benchmarks/client_bench.py
	$(PY) benchmarks/e2e_bench.py

bench-peers: $(STAMP)  ## Tidelog vs NATS JetStream R3 and a RabbitMQ quorum queue, one table (BENCH_PEERS_ARGS=--quick)
	$(PY) benchmarks/bench_peers.py $(BENCH_PEERS_ARGS)

sim-soak: $(STAMP)  ## long Raft simulator soak (100,000 seeds)
	$(VENV)/bin/tidelog sim --seeds 100000 --jobs 2

chaos-full: $(STAMP)  ## every chaos scenario, 5 nodes, 5 min each (root for network faults)
	$(VENV)/bin/tidelog chaos suite --nodes 5 --duration 300 --report chaos-reports

chaos-membership: $(STAMP)  ## the membership nemesis on 5 and 7 nodes, 2 min each (root for network faults)
	$(VENV)/bin/tidelog chaos run membership-5 --duration 120 --report chaos-reports/membership-5
	$(VENV)/bin/tidelog chaos run membership-7 --duration 120 --report chaos-reports/membership-7

clean:  ## remove the virtualenv and caches
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
