# Two entry points: `make quickstart` (the main job) and `make test`. Each installs what it needs first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install quickstart test lint

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Each run gets a folder of its own, so running it again never touches earlier results.
quickstart: $(STAMP)
	$(PY) -m farm_sweep.run studies/quickstart.yaml --output results/quickstart/$(shell date +%Y%m%d-%H%M%S)

# Tests use the real datasets beside the checkout unless FARM_DATA_DIR points elsewhere.
test: export FARM_DATA_DIR ?= $(abspath ../shared/data)
test: $(STAMP)
	$(VENV)/bin/ruff check farm_sweep tests bench
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check farm_sweep tests bench
	$(VENV)/bin/lint-imports
