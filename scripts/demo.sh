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

stage "1/4 mass_maskgen: SLIC masks for every demo volume -> $OUT/masks"
$PY -m monai.bundle run --config_file bundles/mass_maskgen/configs/inference.json \
  --bundle_root bundles/mass_maskgen --dataset_dir "$DEMO" --output_dir "$OUT/masks"

stage "2/4 mass_pretrain: in-context pretraining (tiny preset, 3 mm, 32^3 crops) -> $OUT/pretrain"
(cd bundles/mass_pretrain && ../../$PY -m monai.bundle run --config_file configs/train.json \
  --logging_file configs/logging.conf --dataset_dir "$DEMO" --datalist "$DEMO/datalist.json" --mask_dir "$OUT/masks" \
  --output_dir "$OUT/pretrain" --ckpt_dir "$OUT/pretrain/models" \
  --preset tiny --spacing "[3.0,3.0,3.0]" --crop_size "[32,32,32]" --context_margin 8 --max_masks 6 \
  --min_view_voxels 200 --lr 0.005 --loss#bce_weight 0.0 --aug_magnitude small --batch_size 2 \
  --num_workers 0 --iters_per_epoch 50 --max_epochs 6 --num_val_samples 8 --val_at_start False \
  --progress_bar False)

stage "3/4 mass_fewshot: IC and FT at 1 shot, scratch vs pretrained -> $OUT/fewshot"
$PY -m components.fewshot.sweep --config bundles/mass_fewshot/configs/sweep.json \
  --out_dir "$OUT/fewshot" --pretrained "$OUT/pretrain/models/model.pt"

stage "4/4 mass_probe: frozen-encoder proxy classification, pretrained vs scratch -> $OUT/probe"
$PY -m components.probe.proxy demo --pretrained "$OUT/pretrain/models/model.pt" --out_dir "$OUT/probe" \
  --spacing 3.0 --fractions 0.3,1.0

stage "done"
echo "Masks:            $OUT/masks (summary.json)"
echo "Pretrained model: $OUT/pretrain/models/model.pt"
echo "Few-shot report:  $OUT/fewshot/report.md"
echo "Probe results:    $OUT/probe/results.json"
echo "MLflow UI:        .venv/bin/mlflow ui --backend-store-uri ${MLFLOW_TRACKING_URI:-sqlite:///$OUT/fewshot/mlruns.db}"
