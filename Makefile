# imgsim: `make run` serves the search page from nothing; `make test` runs every check. See docs/deploy.md.
#
# The virtual environment is built on first use and rebuilt when pyproject.toml changes. torch and
# torchvision come from whatever pip resolves for `torch>=...`; on machines whose pip is capped to the
# releases on local disk (torch 2.14.1, torchvision 0.29.1) those are taken without a download.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.imgsim-installed
DEV_STAMP := $(VENV)/.imgsim-dev-installed
IMAGE ?= imgsim:latest
UP_ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=
# `docker compose` (v2 plugin) or the standalone `docker-compose`, whichever is installed.
COMPOSE ?= $(shell if docker compose version >/dev/null 2>&1; then echo "docker compose"; \
	elif command -v docker-compose >/dev/null 2>&1; then echo docker-compose; fi)
COMPOSE_REQUIRED ?=

.PHONY: help run venv venv-dev test lint lint-container bench docker-build clean

help:
	@echo "make run            data -> train (or reuse) -> index -> serve on http://localhost:8000/"
	@echo "make test           ruff, mypy and pytest in a fresh-or-current .venv with the dev extras"
	@echo "make lint           ruff, mypy, hadolint on the Dockerfile, compose validation"
	@echo "make bench          every bench/bench_*.py into BENCHMARKS.md (BENCH_ARGS=--quick: shorter)"
	@echo "make docker-build   build the CUDA image $(IMAGE)"
	@echo "make clean          remove the venv and caches (runs/, indexes/ and data/ are kept)"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e .
	touch $@

# The dev environment also installs the light client (clients/python, its own distribution) as CI would use it.
$(DEV_STAMP): pyproject.toml clients/python/pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[dev]' -e clients/python
	touch $@ $(STAMP)

venv: $(STAMP)

venv-dev: $(DEV_STAMP)

run: $(STAMP)
	$(BIN)/imgsim up $(UP_ARGS)

test: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(DEV_STAMP) lint-container
	$(BIN)/ruff check .
	$(BIN)/mypy

lint-container: $(DEV_STAMP)
	$(BIN)/hadolint Dockerfile
	@if [ -n "$(COMPOSE)" ]; then \
		set -e; \
		echo "$(COMPOSE) -f docker-compose.yml config -q"; \
		$(COMPOSE) -f docker-compose.yml config -q; \
		$(COMPOSE) -f docker-compose.yml --profile cpu --profile jobs --profile scale config -q; \
	elif [ -n "$(COMPOSE_REQUIRED)" ]; then \
		echo "error: neither 'docker compose' nor 'docker-compose' is installed" \
		     "(Debian: apt-get install docker-compose)" >&2; exit 1; \
	else \
		echo "warning: compose file NOT validated: install docker compose or Debian's docker-compose"; \
	fi

# Every bench/bench_*.py; rewrites their marked sections of BENCHMARKS.md (BENCH_ARGS=--quick for a short run).
bench: $(STAMP)
	nice -n 10 $(PY) -m bench.run_all $(BENCH_ARGS)

docker-build:
	docker build -t $(IMAGE) .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
