# BoothStudio developer commands. Everything runs inside .venv (created by `make setup`).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_DIR ?= data
HOST ?= 127.0.0.1
# Extra flags for every service, e.g. `make run ARGS="--config boothstudio.yaml"`.
ARGS ?=

.PHONY: setup run test test-fast test-quality fuzz lint protos protos-check bench sdk clean help

help:
	@echo "make setup   - create .venv and install boothstudio[services,dev,ray] (editable)"
	@echo "make run     - start catalog :50051, generator :50052, trainer :50053 (metrics 9101-9103)"
	@echo "make test    - run the test suite"
	@echo "make test-quality - the detector-judged quality tests (tens of minutes; not in make test)"
	@echo "make fuzz    - long fuzz run of every RPC (20x the examples of the test suite)"
	@echo "make lint    - ruff, mypy (boothstudio.shared, boothstudio.clients), buf lint, generated-code freshness"
	@echo "make protos  - regenerate shared/gen/boothstudio/v1 from protos/"
	@echo "make bench   - run the benchmarks in bench/"
	@echo "make sdk     - build the light boothstudio-sdk wheel into dist/"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned exactly: this picks the CPU wheel on disk, not a multi-GB CUDA build.
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[services,dev,ray]'
	touch $@

setup: $(VENV)/.installed

run: $(VENV)/.installed
	$(PY) -m boothstudio.shared.launcher --host $(HOST) --data-dir $(DATA_DIR) $(ARGS)

# pytest exit code 5 (no tests collected) is a failure like any other non-zero code.
# Two workers (pytest-xdist), each taking whole test files so module fixtures start once:
# most tests wait on service processes, so two share 2 cores well (about 0.7x the serial
# time). TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# Jobs trained for hundreds of steps, their images judged by the detectors (tests/research).
test-quality: $(VENV)/.installed
	BOOTHSTUDIO_QUALITY_TESTS=1 $(PY) -m pytest -m quality -s $(PYTEST_ARGS)

# The fuzz suite runs in `make test` too, bounded; this is the long run (about 5 minutes on 2 cores).
FUZZ_EXAMPLES ?= 1000
fuzz: $(VENV)/.installed
	BOOTHSTUDIO_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest tests/fuzz -m fuzz $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check . || true
	$(VENV)/bin/mypy boothstudio/shared boothstudio/clients
	$(VENV)/bin/buf lint
	$(PY) tools/gen_protos.py --check

protos: $(VENV)/.installed
	$(PY) tools/gen_protos.py

protos-check: $(VENV)/.installed
	$(PY) tools/gen_protos.py --check

bench: $(VENV)/.installed
	@if ls bench/*.py >/dev/null 2>&1; then \
		for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done; \
	else echo "no benchmarks yet"; fi

sdk: $(VENV)/.installed
	$(PY) tools/build_sdk.py --out dist

clean:
	rm -rf $(DATA_DIR) .pytest_cache .mypy_cache .ruff_cache
