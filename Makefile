# The README's commands. `make run` installs and serves the example product;
# `make test` installs everything and runs every check (what CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run mesh test lint typecheck pytest bench image clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e .
	touch $@

# The example third-party connector is installed like any other: through its entry point.
$(VENV)/.installed-test: $(VENV)/.installed tests/fixtures/example_connector/pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet ./tests/fixtures/example_connector
	# Azurite, the Azure Blob emulator the Azure connector's tests run against (npm registry)
	if command -v npm >/dev/null; then npm install --silent --prefix build/azurite --no-audit --no-fund azurite@3; fi
	# Debian's Chromium for the marketplace's browser tests (Playwright drives it; no download)
	command -v chromium >/dev/null || apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }
	touch $@

run: $(VENV)/.installed
	$(BIN)/dataproduct serve

# The example mesh as local processes; the gateway is nginx (from Debian when missing).
mesh: $(VENV)/.installed
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || apt-get install -y -q nginx || { apt-get update -q && apt-get install -y -q nginx; }
	$(BIN)/dataproduct mesh up deploy/examples

test: lint typecheck pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

pytest: $(VENV)/.installed-test
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-test
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/run.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/database.py
	$(BIN)/python bench/object_store.py

image: $(VENV)/.installed-test
	bash deploy/docker/build-image.sh

clean:
	rm -rf $(VENV) build .dataproduct .mypy_cache .ruff_cache .pytest_cache
