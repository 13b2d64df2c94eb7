# The README's two commands: `make serve` and `make test`. Both build the virtual
# environment first (only when pyproject.toml changed), so they work on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: serve test lint bench clean

$(STAMP): pyproject.toml web/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	npm ci --prefix web --no-audit --no-fund  # the dashboard's chart library (docs/dashboard.md)
	touch $@

serve: $(STAMP)
	$(BIN)/gpuhistory db upgrade
	$(BIN)/gpuhistory serve $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -n auto --dist loadfile $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
