# Two entry points for a fresh machine (see README):
#   make demo   -> set up .venv and run the whole MASS pipeline on the embedded demo data
#   make test   -> set up .venv (+ .venv-serve, .venv-deploy), lint (ruff check + format check, mypy on components/),
#                  run the default test suite (live MONAI Label server and MONAI Deploy app included)
PY := .venv/bin/python

.PHONY: setup setup-serve demo lint test test-slow

setup:
	bash scripts/setup.sh

# the MONAI Label (.venv-serve) and MONAI Deploy (.venv-deploy) environments of the live-server tests
setup-serve: setup
	bash scripts/setup_serve.sh

demo: setup
	bash scripts/demo.sh

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

test: lint setup-serve
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow
