#!/usr/bin/env bash
# The whole MASS pipeline on the embedded demo data (data/demo), small enough for a 2-core CPU:
#   1. mass_maskgen  - class-agnostic 3D masks for every demo volume (SLIC: no SAM2 weights needed)
#   2. mass_pretrain - in-context pretraining of the small network on those masks
#   3. mass_fewshot  - few-shot sweep on the brain MRIs: in-context and finetuned, scratch vs pretrained
#   4. mass_probe    - frozen-encoder classification on a proxy task, pretrained vs scratch
# Everything goes to $OUT (default demo_output/); the last lines say where.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=${OUT:-$PWD/demo_output}
DEMO=$PWD/data/demo
mkdir -p "$OUT"
start=$(date +%s)
stage() { echo; echo "=== [$(( $(date +%s) - start ))s] $*"; }

# Every stage runs the same way: from inside its bundle folder, `python -m monai.bundle run` with the
# stage's config plus the bundle's demo override configs/demo.json; only the output paths come from here.
run_bundle() {  # run_bundle BUNDLE CONFIG [--id value ...]
  local bundle=$1 config=$2; shift 2
  (cd "bundles/$bundle" && "$ROOT/$PY" -m monai.bundle run --config_file "['configs/$config','configs/demo.json']" \
    --logging_file configs/logging.conf "$@")
}
ROOT=$PWD

stage "1/4 mass_maskgen: SLIC masks for every demo volume -> $OUT/masks"
run_bundle mass_maskgen inference.json --dataset_dir "$DEMO" --output_dir "$OUT/masks"

stage "2/4 mass_pretrain: in-context pretraining (tiny preset, 3 mm, 32^3 crops) -> $OUT/pretrain"
run_bundle mass_pretrain train.json --dataset_dir "$DEMO" --mask_dir "$OUT/masks" \
  --output_dir "$OUT/pretrain" --ckpt_dir "$OUT/pretrain/models" --overwrite True  # a second demo run redoes it

stage "3/4 mass_fewshot: IC and FT at 1 shot, scratch vs pretrained -> $OUT/fewshot"
run_bundle mass_fewshot sweep.json --dataset_dir "$DEMO" --output_dir "$OUT/fewshot" \
  --pretrained "$OUT/pretrain/models/model.pt"

stage "4/4 mass_probe: frozen-encoder proxy classification, pretrained vs scratch -> $OUT/probe"
# the proxy task (crops of the labelled demo brains), then the bundle's sweep: pretrained-frozen,
# random-frozen and scratch at two data fractions, logged to MLflow, report with AUC per class
$PY scripts/probe_demo.py --out_dir "$OUT/probe/task" --spacing 3.0
run_bundle mass_probe sweep.json --dataset_dir "$OUT/probe/task" --output_dir "$OUT/probe" \
  --pretrained "$OUT/pretrain/models/model.pt"

stage "done"
echo "Masks:            $OUT/masks (summary.json)"
echo "Pretrained model: $OUT/pretrain/models/model.pt"
echo "Few-shot report:  $OUT/fewshot/report.md"
echo "Probe report:     $OUT/probe/report.md"
echo "MLflow UI:        .venv/bin/mlflow ui --backend-store-uri ${MLFLOW_TRACKING_URI:-sqlite:///$OUT/fewshot/mlruns.db} (probe: sqlite:///$OUT/probe/mlruns.db)"
