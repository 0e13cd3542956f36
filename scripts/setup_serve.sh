#!/usr/bin/env bash
# Serving environments, next to (never instead of) the main .venv of scripts/setup.sh; `make test`
# (and so CI) builds them for the live tests in tests/serve/ (`make setup-serve`); docs/deploy.md.
# Usage: scripts/setup_serve.sh [label|deploy|all]   (default: all)
#
#   .venv-serve  (VENV)         MONAI Label 0.8.5 (`PATH=.venv-serve/bin:$PATH monailabel start_server ...`: the launcher runs the `python` on PATH)
#   .venv-deploy (DEPLOY_VENV)  MONAI Deploy App SDK 4.0.0 (holoscan-cu13, MonaiBundleInferenceOperator, DICOM operators)
# Both hold torch/torchvision, SAM2, monai 1.6.1, ignite and this project (editable) with its core
# dependencies, so `import components...` works in either. Each is idempotent: skipped while its
# stamp is newer than this script, scripts/serve-constraints.txt and pyproject.toml.
#
# Why two environments: monai-deploy-app-sdk installs into the `monai` package (monai/deploy), and
# `import monai` eagerly imports every subpackage, so a broken monai.deploy breaks monai itself, and
# with it MONAI Label. The two need opposite pydicom majors and no pin satisfies both (pip resolves
# either way, since neither declares the bound; it is the imports that fail):
#   - pydicom<3: monai/deploy/operators/decoder_nvimgcodec.py does `from pydicom.pixels.common import ...`
#     (pydicom.pixels is new in 3.0) -> `import monai` raises
#     "ModuleNotFoundError: No module named 'pydicom.pixels' ... Error on import of monai.deploy.operators".
#   - pydicom>=3: pydicom-seg 0.4.1 (latest; required by monailabel, imported by its /infer endpoint)
#     does `from pydicom._storage_sopclass_uids import SegmentationStorage` (removed in 3.0) ->
#     "ModuleNotFoundError: No module named 'pydicom._storage_sopclass_uids'"; also pynetdicom 2.x
#     (which needs pydicom<2.5) and highdicom<0.23 (same removed module) are then unusable.
# Besides, in one environment every `import monai` (MONAI Label server included) would load Holoscan.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv-serve}
DEPLOY_VENV=${DEPLOY_VENV:-.venv-deploy}
CONSTRAINTS=scripts/serve-constraints.txt   # MONAI Label pins; .venv-serve only (they forbid pydicom 3)
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
WHICH=${1:-all}
case $WHICH in label|deploy|all) ;; *) echo "usage: $0 [label|deploy|all]" >&2; exit 2 ;; esac

up_to_date() {  # stamp file
  [ -f "$1" ] && [ "$1" -nt scripts/setup_serve.sh ] && [ "$1" -nt "$CONSTRAINTS" ] && [ "$1" -nt pyproject.toml ]
}

pipq() {  # venv, pip arguments: quiet pip, minus this machine's "Location 'file:///opt/...' is ignored" notices
  local venv=$1; shift
  "$venv/bin/python" -m pip --disable-pip-version-check -q "$@" \
    2> >(grep -v "^WARNING: Location 'file://" >&2 || true)
}

base() {  # venv, extra pip arguments for every step: torch pins first, then SAM2 built against them
  local venv=$1; shift
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  printf '*\n' >"$venv/.gitignore"   # keep git status clean even where .gitignore does not list it
  pipq "$venv" install --upgrade "pip>=24" "setuptools>=70" wheel
  pipq "$venv" install "$@" "${TORCH_PINS[@]}"
  # No CUDA extension (no nvcc here); without build isolation it builds against the torch above.
  SAM2_BUILD_CUDA=0 pipq "$venv" install "$@" --no-build-isolation sam2==1.1.0 "${TORCH_PINS[@]}"
}

project_deps() {  # venv: this project's core runtime dependencies (no extras) from pyproject.toml
  "$1/bin/python" -c 'import tomllib
print("\n".join(d.replace(" ", "") for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))'
}

editable() {  # venv: this project, editable, without dependencies (installed above); setuptools'
  # "Editable installation ... same name as your package" notice is hushed, nothing else
  PYTHONWARNINGS="ignore:Editable installation" pipq "$1" install --no-deps -e .
}

check() {  # venv: pip check must be clean
  "$1/bin/python" -m pip --disable-pip-version-check check >/dev/null || {
    "$1/bin/python" -m pip --disable-pip-version-check check >&2; return 1; }
}

build_label() {
  local stamp=$VENV/.mass-serve-done deps
  up_to_date "$stamp" && return 0
  base "$VENV" -c "$CONSTRAINTS"
  deps=$(project_deps "$VENV")
  # shellcheck disable=SC2086  # one requirement per word, none contains spaces or globs
  pipq "$VENV" install -c "$CONSTRAINTS" monailabel==0.8.5 "${TORCH_PINS[@]}" $deps
  # monailabel requires monai[itk], i.e. the `itk` meta-package, which adds itk-filtering/-numerics/
  # -registration/-segmentation (~940 MiB) to the itk-core + itk-io that MONAI's ITKReader and MONAI
  # Label's ITK writer use; its WHEEL file is also malformed ("Tag: itk-5.4.7-cp311-abi3-...") and
  # makes `pip check` (pip 26) crash with InvalidTag. pip check does not check extras, so drop them.
  pipq "$VENV" uninstall -y itk itk-filtering itk-numerics itk-registration itk-segmentation
  editable "$VENV"
  check "$VENV"
  touch "$stamp"
}

build_deploy() {
  local stamp=$DEPLOY_VENV/.mass-deploy-done deps
  up_to_date "$stamp" && return 0
  base "$DEPLOY_VENV"
  deps=$(project_deps "$DEPLOY_VENV")
  # pydicom>=3: monai.deploy.operators imports pydicom.pixels at import time (and `import monai` loads it).
  # highdicom: DICOMSegmentationWriterOperator builds DICOM SEG with it; its class body evaluates
  #   hd.seg.SegmentDescription, so without highdicom monai.deploy.operators (and `import monai`) fails.
  # SimpleITK: NiftiDataLoader and the seg writer's file-path input read images with it.
  # shellcheck disable=SC2086
  pipq "$DEPLOY_VENV" install monai-deploy-app-sdk==4.0.0 "pydicom>=3" "highdicom>=0.23" SimpleITK \
    "${TORCH_PINS[@]}" $deps
  editable "$DEPLOY_VENV"
  check "$DEPLOY_VENV"
  touch "$stamp"
}

[ "$WHICH" = deploy ] || build_label
[ "$WHICH" = label ] || build_deploy
