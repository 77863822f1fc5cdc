# Two entry points: `make quickstart` (the main job) and `make test`. Each installs what it needs first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install quickstart test lint system-packages browser

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,postgres]'
	touch $(STAMP)

# What some tests start: PostgreSQL (initdb, postgres), and OpenSSH's sshd with rsync for `ray up` over SSH.
# Installed with apt-get where this runs as root (as in CI); elsewhere the tests that need them are skipped,
# saying what is missing.
system-packages:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null && \
	    ! { ls /usr/lib/postgresql/*/bin/initdb && test -x /usr/sbin/sshd && command -v rsync; } > /dev/null 2>&1; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    postgresql openssh-server rsync; \
	fi

install: $(STAMP)

# Each run gets a folder of its own, so running it again never touches earlier results.
quickstart: $(STAMP)
	$(PY) -m farm_sweep.run studies/quickstart.yaml --output results/quickstart/$(shell date +%Y%m%d-%H%M%S)

# The MLflow UI test drives a real headless browser: Debian's chromium and chromium-driver, installed where this
# runs as root (as in CI); elsewhere the test is skipped and says why.
browser:
	@command -v chromedriver >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -q && apt-get install -y -q chromium chromium-driver; } || \
		echo "no chromium-driver here: the MLflow UI test will be skipped (as root: apt-get install chromium chromium-driver)"

# Tests use the real datasets beside the checkout unless FARM_DATA_DIR points elsewhere. Two pytest processes,
# each test file in one of them (its module fixtures run once); plain `pytest` runs them in one.
test: export FARM_DATA_DIR ?= $(abspath ../shared/data)
test: $(STAMP) system-packages browser
	$(VENV)/bin/ruff check farm_sweep tests bench
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check farm_sweep tests bench
	$(VENV)/bin/lint-imports
