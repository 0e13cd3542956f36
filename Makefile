# Two entry points for a fresh machine (see README):
#   make demo   -> set up .venv and run the whole MASS pipeline on the embedded demo data
#   make test   -> set up .venv and run the default (fast) test suite
PY := .venv/bin/python

.PHONY: setup demo test test-slow

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow
