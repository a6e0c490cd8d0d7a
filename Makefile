PYTHON ?= python3
VENV := .venv
ARGS ?=

.PHONY: serve test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

serve: $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e .
	exec $(VENV)/bin/tokenport serve $(ARGS)

test: $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[test]'
	scripts/ensure-postgres
	scripts/ensure-redis
	scripts/ensure-npm
	$(VENV)/bin/ruff check tokenport tests bench
	$(VENV)/bin/pytest -q $(ARGS)
