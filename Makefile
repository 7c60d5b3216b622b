PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test test-fast lint typecheck pytest venv clean audit

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

## Run the whole system on the embedded default: Temporal dev server, carrier simulator, worker, API.
dev: $(STAMP)
	$(BIN)/python -m scripts.dev

## Every check: lint, types, tests.
test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy .

pytest: $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

## The inner loop: lint, and the unit, time-skipping and replay tests (no dev server, database or simulator).
test-fast: lint $(STAMP)
	$(BIN)/pytest -q -m "not integration" $(PYTEST_ARGS)

## Known vulnerabilities in the locked packages (pip-audit, PyPI's advisory data). --strict: a package
## it cannot look up is a failure, not a silent pass.
audit:
	$(PYTHON) -m venv .venv-audit
	.venv-audit/bin/pip install --quiet --disable-pip-version-check --no-deps -r requirements-audit.lock
	.venv-audit/bin/pip-audit --strict --disable-pip --no-deps --vulnerability-service pypi -r requirements.lock

clean:
	rm -rf $(VENV) .venv-audit .data .mypy_cache .ruff_cache .pytest_cache
