# The two commands of the README: `make run` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install migrate seed bench clean

$(STAMP): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

migrate: $(STAMP)
	$(BIN)/flask --app wsgi db upgrade

seed: migrate
	$(BIN)/flask --app wsgi shop seed

## run: app on http://127.0.0.1:5000 with SQLite and the built-in sandbox gateway on :5001
run: seed
	$(BIN)/python -m app.devserver

## test: the whole suite (SQLite always; PostgreSQL/Redis when TEST_DATABASE_URL/TEST_REDIS_URL are set)
test: $(STAMP)
	$(BIN)/python tests/browser_setup.py
	$(BIN)/python -m pytest -n auto -p no:cacheprovider -p no:playwright $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) instance/*.db
