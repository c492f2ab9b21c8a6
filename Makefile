# Two commands set everything up on a fresh machine: `make run` and `make test`.
# Both create the virtualenv and install the project (editable, with dev tools) on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config.example.toml

.PHONY: run test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/dispatch run -c $(CONFIG) --exit-when-done

lint: $(STAMP)
	$(BIN)/ruff check dispatch strategies migrations tests bench examples
	$(BIN)/ruff format --check dispatch strategies migrations tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

# Lint and types fail the build before the suite runs; the suite's summary line is the last output.
test: lint typecheck
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dispatch.db
