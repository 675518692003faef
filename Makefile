# Playbook: `make dev` runs the whole product locally, `make test` runs every check.
# A new machine needs only Python 3.11: everything else is installed into .venv.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: dev test lint typecheck install browser pgbouncer wrk services stop reset bench soak clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Debian packages that the tests and benchmarks drive: installed once (with sudo when not
# root); elsewhere, say what to install. $(1): the command that must exist, $(2): the package.
define debian_package
	@if command -v $(1) >/dev/null 2>&1; then exit 0; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "This needs $(1) (Debian: apt-get install $(2))"; exit 1; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2); \
	elif command -v sudo >/dev/null 2>&1; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2); \
	else \
		echo "This needs $(1): run \`apt-get update && apt-get install $(2)\` as root"; exit 1; \
	fi
endef

# The browser tests (tests/e2e) drive Debian's chromium through Playwright; `playwright
# install` downloads nothing here.
browser:
	$(call debian_package,/usr/bin/chromium,chromium)

# tests/test_pgbouncer.py runs Debian's pgbouncer, in transaction pooling mode, in front of
# the test database.
pgbouncer:
	$(call debian_package,/usr/sbin/pgbouncer,pgbouncer)

# The tenant-machinery benchmark (bench/machinery.py) drives the app with wrk.
wrk:
	$(call debian_package,wrk,wrk)

dev: install
	$(PY) -m config.devstack dev

lint: install
	$(VENV)/bin/ruff check .

typecheck: install
	$(PY) -m config.devstack run -- $(VENV)/bin/mypy .

test: install browser pgbouncer
	$(VENV)/bin/ruff check .
	$(PY) -m config.devstack run -- sh -c '$(VENV)/bin/mypy . && $(VENV)/bin/pytest $(PYTEST_ARGS)'

bench: install wrk
	$(PY) -m config.devstack run -- $(PY) bench/run.py

# The long reliability runs (about 18 minutes): ten minutes of mixed API traffic from 50
# virtual users across 20 tenants, every response checked (tests/reliability/load.py; gunicorn
# 3x4 and a Celery worker of concurrency 4, as in the Procfile), then the fault suite with
# 45-second outages and three rounds of each fault (tests/reliability/test_faults.py).
soak: install
	$(PY) -m config.devstack run -- env LOAD_DURATION=600 LOAD_USERS=50 LOAD_TENANTS=20 \
		LOAD_WEB_WORKERS=3 LOAD_WORKER_CONCURRENCY=4 LOAD_DRAIN=300 \
		$(VENV)/bin/pytest tests/reliability/test_load.py -s -p no:cacheprovider
	$(PY) -m config.devstack run -- env FAULTS_OUTAGE_SECONDS=45 FAULTS_ROUNDS=3 \
		$(VENV)/bin/pytest tests/reliability/test_faults.py -s -p no:cacheprovider

services: install
	$(PY) -m config.devstack up

stop:
	$(PY) -m config.devstack down

reset:
	$(PY) -m config.devstack reset

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
