# fixedip: `make run` starts the offline demo gateway, `make test` runs the whole suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install install-dev compile run test sanitize lint fmt fuzz bench bench-import clean

# The venv and the package with its server extra; re-runs only when pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[server]'
	touch $@

install: $(STAMP)

$(VENV)/.installed-dev: $(STAMP) pyproject.toml
	$(BIN)/pip install --quiet -e '.[server,aws,dev]'
	touch $@

install-dev: $(VENV)/.installed-dev

# The hot path compiled with mypyc into C extension modules beside their sources (about
# half the CPU per request), and the HTTP head path's hand-written C (see scripts/compile).
# Rebuilt when any source changes, since compiled code assumes the shapes of what it
# imports. Without gcc and Python's headers it says so and the pure-Python modules run.
COMPILED := src/fixedip/.compiled
$(COMPILED): $(STAMP) $(shell find src/fixedip -name '*.py' -o -name '*.c')
	scripts/compile $(COMPILE_STRICT)

compile: $(COMPILED)

run: install compile
	$(BIN)/fixedip serve $(if $(CONFIG),--config $(CONFIG))

# The suite runs inside a fresh network namespace that holds only loopback
# (scripts/isolated: `unshare --net`, then `ip link set lo up`), so a test that expects a
# refusal can never put a packet on a real network (see docs/testing.md). Then the tests
# of the hand-written C run again against a build with AddressSanitizer and UBSan
# (scripts/sanitize). A build that fails stops the tests and the benchmarks (make run
# goes on in pure Python).
test bench: COMPILE_STRICT := --strict
test: install-dev lint compile .venv-checkov/.installed
	scripts/isolated $(BIN)/pytest -n 2 $(PYTEST_ARGS)
	$(if $(PYTEST_ARGS),,scripts/sanitize -n 2)

sanitize: install-dev compile
	scripts/sanitize -n 2

# checkov (for the Terraform that `fixedip render` writes) in a venv of its own: it pins
# its own boto3 and ships a second `hcl2` module. tests/render runs it with --skip-download.
.venv-checkov/.installed:
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install --quiet --upgrade pip
	.venv-checkov/bin/pip install --quiet checkov
	touch $@

lint: install-dev
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/mypy

# Coverage-guided fuzzing (atheris) of the HTTP head parser, the SOCKS5 parser and the
# config loader, for a bounded time (FUZZ_SECONDS per target). Crashes land in fuzz/crashes/.
# atheris follows Python bytecode, so the compiled hot path is removed first (the next
# make run or make test builds it again).
FUZZ_SECONDS ?= 60
fuzz: install-dev
	scripts/compile --clean
	$(BIN)/pip install --quiet atheris
	scripts/isolated $(BIN)/python fuzz/run.py --seconds $(FUZZ_SECONDS)

# Benchmarks against peers (nginx origin, squid, tinyproxy, proxy.py) on loopback; writes
# benchmarks/results/latest.{json,md}. Installs its peers (apt, and proxy.py in its own venv).
# Then the webhook relay (durable acks/s with 1 KiB bodies -> benchmarks/results/ingress.*)
# flow-log analysis (records/s -> benchmarks/results/flows.*) and the fleet's Redis client
# against redis-py (CPU per limiter call -> benchmarks/results/redis-client.*).
bench: install-dev compile
	benchmarks/run $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.ingress
	$(BIN)/python -m benchmarks.flows
	$(BIN)/python -m benchmarks.redis_client

# Import cost of the client SDK against `import json`, in fresh interpreters.
bench-import: install-dev
	$(BIN)/python benchmarks/client_import.py

fmt: install-dev
	$(BIN)/ruff format src tests examples benchmarks
	$(BIN)/ruff check --fix src tests examples benchmarks

clean:
	scripts/compile --clean
	rm -rf $(VENV) .venv-checkov build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
