#!/usr/bin/env bash
# Create the project's single environment in .venv (idempotent: a finished setup is skipped).
# Order matters: torch/torchvision first (exact pins, CUDA build that runs on CPU), then SAM2
# built without its CUDA extension and without build isolation (it must see the installed
# torch), then this project with its pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.mass-setup-done
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt scripts/setup.sh ]; then
  exit 0
fi
[ -x $VENV/bin/python ] || "$PY" -m venv $VENV
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"
$PIP install -q --upgrade "pip>=24" "setuptools>=70" wheel
$PIP install -q $TORCH_PINS
SAM2_BUILD_CUDA=0 $PIP install -q --no-build-isolation sam2==1.1.0 $TORCH_PINS
$PIP install -q -e ".[all]" $TORCH_PINS
$PIP check
touch "$STAMP"
