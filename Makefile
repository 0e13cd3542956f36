# Two entry points for a fresh machine (see README):
#   make demo   -> set up .venv and run the whole MASS pipeline on the embedded demo data
#   make test   -> set up .venv, lint (ruff check + format check, mypy on components/), run the default test suite
PY := .venv/bin/python

.PHONY: setup demo lint test test-slow

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

test: lint
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow
