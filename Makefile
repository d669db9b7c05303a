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
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all]'
	@touch $@

test: venv lint typecheck pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy --strict artifact

pytest: venv
	$(BIN)/python -m pytest -q

demo: venv
	@echo "make demo will run the whole OTA slice on embedded defaults (SQLite, local storage):"
	@echo "  generate the shapes dataset, train SqueezeNet v1, sign and publish it, start the server,"
	@echo "  a device agent serving /predict and a simulated fleet of 50, then fine-tune v2 and watch"
	@echo "  the fleet move to it over deltas. It is not built yet (issue 5: device agent and demo)."
	@exit 1

# Benchmarks take minutes; they are not part of `make test`. Results go to docs/benchmarks.md.
bench-deps:
	@command -v xdelta3 >/dev/null || (apt-get install -y xdelta3 >/dev/null || sudo apt-get install -y xdelta3)

bench: venv bench-deps
	$(BIN)/python bench/deltas.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache ota-data
