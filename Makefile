# The README's two commands: `make serve` and `make test`. Both build the virtual
# environment first (only when pyproject.toml changed), so they work on a fresh machine with
# Python alone: `serve` installs the runtime dependencies, `test` adds the test extra.
# `make vendor` (a maintainer's command, needs npm) refreshes the shipped chart library.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
RUNTIME := $(VENV)/.runtime
STAMP   := $(VENV)/.installed
ARGS    ?=

.PHONY: serve test lint bench vendor dist clean

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

# The test extra holds the runtime too, so this stamp also stands for the runtime one.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(RUNTIME)

serve: $(RUNTIME)
	$(BIN)/gpuhistory db upgrade
	$(BIN)/gpuhistory serve $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -n auto --dist loadfile --durations=15 $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

vendor:
	$(PYTHON) tools/vendor_uplot.py

dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build
	$(BIN)/python -m twine check --strict dist/*

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist
