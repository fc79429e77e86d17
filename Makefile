# Two commands set everything up: `make run` and `make test`.
# The first run of either creates .venv and installs the pinned dependencies.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export NO_MKDOCS_2_WARNING := 1  # mkdocs-material's end-of-life banner; noted in docs/production
STAGE  ?=
HOST   ?= 127.0.0.1
PORT   ?= 8000
WORKERS ?= 1
# `make loadtest` settings, empty = the runner's defaults (`python -m loadtests.compare --help`):
# seconds per step (10), the offered rates of the CPU steps (0.25,0.5,1,2,3,4,6,8 crunch jobs
# per second) and of the I/O steps (2,4,8,16,32,64,128 wait jobs per second), the prober's rate
# (10/s), which variants (e.g. VARIANTS=stage1-async,stage2,stage2-w2), PUBLISH=1 to also
# refresh docs/results/, and any other flag of the runner in LOADTEST_ARGS.
STEP_SECONDS  ?=
CPU_RATES     ?=
IO_RATES      ?=
PROBER_RATE   ?=
VARIANTS      ?=
PUBLISH       ?=
LOADTEST_ARGS ?=
STAGE_PACKAGES := $(patsubst %/,%,$(dir $(wildcard stage*_*/main.py)))

.DEFAULT_GOAL := help
.PHONY: help run scaleout test check tools chaos lint format bench loadtest docs lock clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed; set PYTHON=python3.11 (or newer)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

run: $(BIN)/.installed  ## start the newest stage (or STAGE=n): embedded Valkey, API, worker(s)
	$(BIN)/python -m devkit.run $(if $(STAGE),--stage $(STAGE)) --host $(HOST) --port $(PORT) --workers $(WORKERS)

scaleout: $(BIN)/.installed  ## stage 4 past one machine: Valkey + sentinels, PostgreSQL, 2 APIs, 3 worker hosts
	$(BIN)/python -m devkit.scaleout

test: $(BIN)/.installed tools  ## everything CI checks: lint, types, tests, docs build, load-test smoke
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(STAGE_PACKAGES) jobkit
	$(BIN)/python -m pytest tests/jobkit --cov=jobkit --cov-report=term:skip-covered --cov-fail-under=90
	$(BIN)/python -m pytest --ignore=tests/jobkit $(addprefix --cov=,$(STAGE_PACKAGES)) --cov-report=term:skip-covered
	$(BIN)/mkdocs build --strict --quiet --site-dir .data/site

# The contributor's loop: what `make test` checks, less the tests that start processes of
# their own (marked e2e or browser: uvicorn, arq, the runner, a server, Chromium, the pages,
# the benchmark and load-test smoke runs) and the docs build. About a minute; tests/conftest.py
# fails a test that starts a process without saying so.
CHECK_MARKERS := not e2e and not browser
check: $(BIN)/.installed  ## the fast lane (about a minute): lint, types, the tests that start no process
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(STAGE_PACKAGES) jobkit
	$(BIN)/python -m pytest -m "$(CHECK_MARKERS)" -q

# Chromium, wrk, redis-server, PostgreSQL and openssl come from apt-get (as root), not pip:
# tests drive them but never install them, and fail with "run `make tools`" when one is
# missing (a skip would hide the coverage). Installed ones are left alone.
tools: $(BIN)/.installed  ## install the programs tests drive (Chromium, wrk, redis-server, PostgreSQL, openssl)
	$(BIN)/python -m devkit.tools

chaos: $(BIN)/.installed  ## failure injection at full size: kills, Redis crash, 15 s of load, long fuzzing
	CHAOS_SCALE=full $(BIN)/python -m pytest -rP --timeout=900 tests/test_crash_worker.py \
		tests/test_crash_api.py tests/test_crash_redis.py tests/test_concurrency.py tests/test_fuzz.py \
		tests/test_scaleout.py

lint: $(BIN)/.installed  ## ruff check + format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(BIN)/.installed  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: $(BIN)/.installed tools  ## enqueue rate, worker throughput, latency per stage (slow; not in make test)
	$(BIN)/python -m devkit.bench

loadtest: $(BIN)/.installed  ## step the load up until each stage breaks (~20 min; STEP_SECONDS=4: ~10)
	$(BIN)/python -m loadtests.compare $(if $(STEP_SECONDS),--step-seconds $(STEP_SECONDS)) \
		$(if $(CPU_RATES),--cpu-rates $(CPU_RATES)) $(if $(IO_RATES),--io-rates $(IO_RATES)) \
		$(if $(PROBER_RATE),--prober-rate $(PROBER_RATE)) $(if $(VARIANTS),--variants $(VARIANTS)) \
		$(if $(PUBLISH),--publish) $(LOADTEST_ARGS)

docs: $(BIN)/.installed  ## serve the tutorial site on http://127.0.0.1:8001
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

# A throwaway venv resolves pyproject.toml's ranges afresh, without the old pins (freezing
# .venv would only re-pin what the pins installed). Review the diff and run the tests.
LOCK_VENV := .data/lock-venv
lock:  ## re-resolve the newest versions pyproject.toml allows and re-pin constraints.txt
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | grep -v '^pip==' > constraints.txt
	rm -rf $(LOCK_VENV)
	git diff --stat constraints.txt || true

clean:  ## remove the virtual environment, caches and the data folder
	rm -rf $(VENV) .data .pytest_cache .ruff_cache .coverage site
