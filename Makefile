# stockpipe: `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The stamp is newer than both dependency files only when the venv matches them.
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (stockpipe needs Python 3.11)"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	@touch $(STAMP)

.PHONY: help
help: ## Show this help
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: install
install: $(STAMP) ## Create the virtualenv (.venv) from the pinned lock, if missing or stale

.PHONY: run
run: $(STAMP) ## Run the daily pipeline on the bundled snapshot (MSFT, GSPC)
	$(BIN)/stockpipe run
	$(BIN)/stockpipe status

.PHONY: test
test: $(STAMP) ## Run the unit and integration tests (about 14 minutes on 2 cores)
	$(BIN)/python -m pytest tests/unit tests/integration $(PYTEST_ARGS)

.PHONY: lint
lint: $(STAMP) ## Check style, types and import direction: ruff over everything, mypy and import-linter over pipeline/
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

.PHONY: format
format: $(STAMP) ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: test-unit
test-unit: $(STAMP) ## Run only the fast unit tests
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

.PHONY: test-integration
test-integration: $(STAMP) ## Run only the integration tests (real Prefect and MLflow)
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

.PHONY: test-system
test-system: $(STAMP) ## Run the system tests: the production stack on PostgreSQL, real kills, the secret scan, the README played
	$(BIN)/python -m pytest tests/system $(PYTEST_ARGS)

.PHONY: postgres
postgres: ## Install PostgreSQL from Debian's packages if missing (the production-stack system test needs it)
	bash scripts/install-postgres.sh

.PHONY: bench
bench: $(STAMP) ## Measure quality, cost, scaling, memory and a 64-ticker universe (about 45 min); writes bench/results.*
	$(BIN)/python bench/run.py

.PHONY: bench-quick
bench-quick: $(STAMP) ## The benchmark in one ticker, two epochs (CI keeps it from rotting)
	$(BIN)/python bench/run.py --quick --out bench/out

.PHONY: status
status: $(STAMP) ## Show champions and last decisions as JSON
	$(BIN)/stockpipe status --json

.PHONY: ui
ui: $(STAMP) ## Open the MLflow UI on http://127.0.0.1:5000 over the local store
	$(BIN)/stockpipe ui

.PHONY: screenshots
screenshots: $(STAMP) ## Browser check: MLflow and Prefect UI screenshots over a real run, into docs/screenshots (installs Debian's Chromium; ~3.5 min; not in CI)
	bash scripts/install-chromium.sh
	$(BIN)/python scripts/screenshots.py

.PHONY: lock
lock: ## Re-resolve dependencies from pyproject.toml into requirements.lock
	rm -rf /tmp/stockpipe-lock && $(PYTHON) -m venv /tmp/stockpipe-lock
	/tmp/stockpipe-lock/bin/pip install --quiet '.[dev]'
	{ echo '# Full pin set used by the Makefile as pip constraints (regenerate: make lock).'; \
	  /tmp/stockpipe-lock/bin/pip freeze --exclude stockpipe; } > requirements.lock

.PHONY: clean
clean: ## Delete local state (.stockpipe) and caches, keeping the venv
	rm -rf .stockpipe .pytest_cache
