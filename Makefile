# Two entry points on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast lint format bench bench-e2e bench-engine bench-routing bench-control-plane bench-batch up clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU build on this image's disk; a looser
	# requirement could pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	# One command, so the resolver takes the server's loraq-client requirement from the local
	# client (it is not on PyPI).
	$(PY) -m pip install -q -e ./clients/python -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m loraq.cli demo

test: $(STAMP)
	$(PY) -m pytest

# In-process tests only (no redis-server, no uvicorn, no training): seconds, not minutes.
test-fast: $(STAMP)
	$(PY) -m pytest -m unit

lint: $(STAMP)
	$(VENV)/bin/ruff check api worker common webhooks loraq clients/python/loraq_client tests bench
	$(VENV)/bin/ruff format --check api worker common webhooks loraq clients/python/loraq_client tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format api worker common webhooks loraq clients/python/loraq_client tests bench
	$(VENV)/bin/ruff check --fix api worker common webhooks loraq clients/python/loraq_client tests bench

bench-e2e: $(STAMP)
	$(PY) bench/e2e.py

bench-engine: $(STAMP)
	$(PY) bench/engine.py

bench-routing: $(STAMP)
	$(PY) bench/routing.py

bench-control-plane: $(STAMP)
	$(PY) bench/control_plane.py

bench-batch: $(STAMP)
	$(PY) bench/batch.py

up: $(STAMP)
	$(PY) -m loraq.cli up

clean:
	rm -rf $(VENV) .loraq .pytest_cache .mypy_cache .ruff_cache
