# Playbook: `make dev` runs the whole product locally, `make test` runs every check.
# A new machine needs only Python 3.11: everything else is installed into .venv.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: dev test lint typecheck install services stop reset bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

dev: install
	$(PY) -m config.devstack dev

lint: install
	$(VENV)/bin/ruff check .

typecheck: install
	$(PY) -m config.devstack run -- $(VENV)/bin/mypy .

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m config.devstack run -- sh -c '$(VENV)/bin/mypy . && $(VENV)/bin/pytest $(PYTEST_ARGS)'

bench: install
	$(PY) -m config.devstack run -- $(PY) bench/run.py

services: install
	$(PY) -m config.devstack up

stop:
	$(PY) -m config.devstack down

reset:
	$(PY) -m config.devstack reset

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
