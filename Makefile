# One entry point for people and CI. `make run` serves the API, `make test` checks everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ASSET_STAMP := .assets/.installed-stamp
PORT ?= 8000
# `make token USER=bob`; the login name in the environment's USER is not taken (a plain `make token` is alice's).
TOKEN_USER := $(or $(USER_ID),$(if $(filter command line,$(origin USER)),$(USER)),alice)

.PHONY: install run test lint typecheck pytest token schema bench bench-profile clean

install: $(STAMP) $(ASSET_STAMP)

# Re-install when the venv is missing or pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# Swagger UI and GraphiQL builds from npm (package-lock.json); fetched again when the list changes.
$(ASSET_STAMP): package.json package-lock.json scripts/explorer-assets.sh
	@if command -v npm >/dev/null; then sh scripts/explorer-assets.sh && touch $@; \
	else echo "warning: npm not found, so /docs and /graphql will not load: install Node.js, then make install" >&2; fi

run: install
	@$(PY) -m backend.dev_banner --url http://127.0.0.1:$(PORT)
	$(VENV)/bin/uvicorn backend.main:app --host 127.0.0.1 --port $(PORT) --no-server-header --no-proxy-headers --no-access-log

token: install
	@$(PY) -m backend.dev_token $(TOKEN_USER)

schema: install
	$(VENV)/bin/strawberry export-schema backend.gql.schema:schema --output schema.graphql

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

pytest: install
	$(VENV)/bin/pytest

test: lint typecheck pytest

# On demand, never part of `make test`: needs PostgreSQL on 127.0.0.1:5432 and wrk (installed if missing).
# Seeds a scratch database, loads the app and bench/ceiling.py; raw results in bench/results/.
bench: install
	$(PY) -m bench.run

# py-spy profiles of the REST list, GraphQL list and create under load (flamegraphs in bench/results/).
bench-profile: install
	$(PY) -m bench.run --profile

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache todo.db todo.db-* node_modules .assets
