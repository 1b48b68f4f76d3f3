# vidserve: `make run` starts the whole service locally, `make test` runs the suite.
SHELL := /bin/bash
PY := .venv/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: run test test-quick fuzz bench bench-quick bench-load lint venv models migrate clean

venv: .venv/.installed

.venv/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv .venv
	@$(PY) -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch; \
	 else $(PY) -m pip install -q torch==$(TORCH_VERSION); fi
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $@

models: venv
	@$(PY) -m vidserve.tools.cli models build-tiny

migrate: venv
	@$(PY) -m vidserve.tools.cli db upgrade

run: venv
	@$(PY) -m vidserve.tools.devserver

# pytest exits 5 when it collects nothing (e.g. a filtered run): not a failure of the suite. -rfEs: the names of
# failures, errors and skips last, where CI's tail shows them; --durations: where the time goes.
test: venv
	@$(PY) -m pytest -q -rfEs --durations=40 $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# The everyday subset for developing: the in-process tests (engine, API, worker, job domain, docs), without the
# suites that start real service processes (e2e, faults, admin, cli, fuzz). `make test` stays CI's command.
QUICK_TESTS := tests/engine tests/api tests/worker tests/vidserve tests/docs
test-quick: venv
	@$(PY) -m pytest -q -rs -m "not slow" $(QUICK_TESTS) $(PYTEST_ARGS)

# Schemathesis against the API from its OpenAPI document, at ten times the suite's size. One operation's 300
# examples can outlast the suite's 300 s per-test limit on a busy machine: an hour each here.
fuzz: venv
	@VIDSERVE_FUZZ_EXAMPLES=$${VIDSERVE_FUZZ_EXAMPLES:-300} VIDSERVE_FUZZ_COVERAGE=1 $(PY) -m pytest -q -p no:cacheprovider --timeout=3600 tests/fuzz

bench: venv
	@$(PY) -m engine.bench $(BENCH_ARGS)
	@$(PY) -m engine.bench.layer_split
	@$(PY) -m engine.bench.checkpoint
	@$(PY) -m engine.bench.long_video

bench-quick: venv
	@$(PY) -m engine.bench --quick

# The load fault test at full size (CI runs it with 40 jobs from 8 clients): 200 jobs, 20 clients, 2 workers.
bench-load: venv
	@set -o pipefail; VIDSERVE_LOAD_JOBS=$${VIDSERVE_LOAD_JOBS:-200} VIDSERVE_LOAD_CLIENTS=$${VIDSERVE_LOAD_CLIENTS:-20} \
	 VIDSERVE_FAIR_A_JOBS=$${VIDSERVE_FAIR_A_JOBS:-200} VIDSERVE_FAIR_B_JOBS=$${VIDSERVE_FAIR_B_JOBS:-10} \
	 $(PY) -m pytest -q -s -p no:cacheprovider tests/faults/test_load.py tests/faults/test_fair_load.py \
	 | grep -E '^(fair )?load:|passed|failed'

lint: venv
	@.venv/bin/ruff check .
	@.venv/bin/ruff format --check .

clean:
	rm -rf var .pytest_cache
