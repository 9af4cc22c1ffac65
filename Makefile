# LedgerBridge — `make sandbox` runs the demo gateway, `make test` runs every check.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: sandbox serve test lint typecheck imports openapi pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

sandbox: $(STAMP)
	$(BIN)/ledgerbridge sandbox

serve: $(STAMP)
	$(BIN)/ledgerbridge serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

imports: $(STAMP)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

openapi: $(STAMP)
	$(BIN)/ledgerbridge openapi > openapi/openapi.json

pytest: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint imports typecheck pytest

-include bench/Makefile.fragment

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
