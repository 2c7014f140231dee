# fixedip: `make run` starts the offline demo gateway, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install install-dev run test lint typecheck fmt clean

# The venv and the package with its server extra; re-runs only when pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[server]'
	touch $@

install: $(STAMP)

$(VENV)/.installed-dev: $(STAMP)
	$(BIN)/pip install --quiet -e '.[server,dev]'
	touch $@

install-dev: $(VENV)/.installed-dev

run: install
	$(BIN)/fixedip serve $(if $(CONFIG),--config $(CONFIG))

# The suite runs inside a fresh network namespace that holds only loopback, so a test
# that expects a refusal can never put a packet on a real network (see docs/testing.md).
test: install-dev lint
	scripts/isolated $(BIN)/pytest -n 2 $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check src tests
	$(BIN)/mypy

fmt: install-dev
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
