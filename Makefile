# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test lint typecheck pytest demo bench bench-deps clean

venv: $(STAMP)

# Reinstall whenever the dependency list changes. pip only: no other network than the package registries.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[all]'
	@touch $@

test: venv lint typecheck pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: venv
	$(BIN)/mypy --strict artifact device_agent server model_builder

pytest: venv
	$(BIN)/python -m pytest -q --durations=25

# The whole slice on embedded defaults (SQLite, local storage); DEMO_EXIT=1 exits after the summary.
demo: venv
	$(BIN)/python scripts/demo.py

# Benchmarks take minutes; they are not part of `make test`. Results go to docs/benchmarks.md.
# They run as modules from the repository root (`python -m bench.NAME`): no sys.path edits.
bench-deps:
	@command -v xdelta3 >/dev/null || (apt-get install -y xdelta3 >/dev/null || sudo apt-get install -y xdelta3)

bench: venv bench-deps
	$(BIN)/python -m bench.deltas
	$(BIN)/python -m bench.train
	$(BIN)/python -m bench.compression
	$(BIN)/python -m bench.poll
	$(BIN)/python -m bench.db_deadline
	$(BIN)/python -m bench.hotswap
	$(BIN)/python -m bench.fleet
	$(BIN)/python -m bench.upload_memory
	$(BIN)/python -m bench.rollouts
	$(BIN)/python -m bench.retention

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache ota-data demo-data
