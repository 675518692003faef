# Playbook: `make dev` runs the whole product locally, `make test` runs every check.
# A new machine needs only Python 3.11: everything else is installed into .venv.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: dev test lint typecheck install browser services stop reset bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# The browser tests (tests/e2e) drive Debian's chromium through Playwright; `playwright
# install` downloads nothing here. Installed once, with sudo when not root.
CHROMIUM := /usr/bin/chromium
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
browser:
	@if [ -x $(CHROMIUM) ]; then exit 0; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "The browser tests need chromium at $(CHROMIUM) (Debian: apt-get install chromium)"; exit 1; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && $(APT_INSTALL); \
	elif command -v sudo >/dev/null 2>&1; then \
		sudo apt-get update -qq && sudo $(APT_INSTALL); \
	else \
		echo "The browser tests need chromium: run \`apt-get update && apt-get install chromium\` as root"; exit 1; \
	fi

dev: install
	$(PY) -m config.devstack dev

lint: install
	$(VENV)/bin/ruff check .

typecheck: install
	$(PY) -m config.devstack run -- $(VENV)/bin/mypy .

test: install browser
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
