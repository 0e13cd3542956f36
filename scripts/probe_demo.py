"""The probe stage of the demo: the proxy task from the repository's labelled brain MRIs, then the
``mass_probe`` bundle (``configs/train.json`` + ``configs/demo.json``) for every run and data fraction.

Runs: ``pretrained_frozen`` (the ``--pretrained`` encoder, frozen), ``random_frozen`` (random encoder,
frozen: the floor a pretrained encoder must beat) and ``scratch_full`` (random encoder trained with the
head: the paper's "full training" baseline). Prints and writes ``<out_dir>/results.json``.

    .venv/bin/python scripts/probe_demo.py --pretrained demo_output/pretrain/models/model.pt \\
        --out_dir demo_output/probe --fractions 0.3,1.0

One run of the bundle by hand, on the task this script built::

    cd bundles/mass_probe
    python -m monai.bundle run --config_file "['configs/train.json','configs/demo.json']" \\
        --logging_file configs/logging.conf --dataset_dir ../../demo_output/probe/task --preset tiny ...
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire
import torch

from components.io.atomic import atomic_json
from components.probe.proxy import build_proxy_task, run_bundle

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "mass_probe"
DEMO_VOLUMES = [  # (image, label, split) in data/demo: a different scan per split
    ("colin27_t1.nii.gz", "colin27_seg.nii.gz", "train"),  # Colin27 average, whole head
    ("itk_t1.nii.gz", "itk_seg.nii.gz", "val"),  # individual scan, whole head, 2x2x3 mm
    ("mni152_t1.nii.gz", "mni152_seg.nii.gz", "test"),  # MNI152 2009a, skull-stripped
]
RUNS = {  # name -> bundle overrides (the pretrained weights are added for "pretrained")
    "pretrained_frozen": {"mode": "frozen"},
    "random_frozen": {"mode": "frozen", "pretrained": ""},
    "scratch_full": {"mode": "scratch", "pretrained": ""},
}


def demo_volumes(data_dir: str | Path | None = None) -> list[dict[str, str]]:
    """The three labelled brain MRIs of ``data/demo`` with their split."""
    root = Path(data_dir) if data_dir else REPO_ROOT / "data" / "demo"
    return [{"image": str(root / i), "label": str(root / s), "split": sp} for i, s, sp in DEMO_VOLUMES]


def build(
    out_dir: str = "demo_output/probe/task",
    data_dir: str = "",
    crop: int = 32,
    spacing: float = 2.0,
    per_class: int = 12,
    seed: int = 0,
) -> str:
    """Build the proxy task only; returns the datalist path."""
    path = build_proxy_task(
        out_dir,
        volumes=demo_volumes(data_dir or None),
        crop_size=(crop,) * 3,
        spacing=(spacing,) * 3,
        per_class=per_class,
        seed=seed,
    )
    return str(path)


def demo(
    pretrained: str = "",
    out_dir: str = "demo_output/probe",
    data_dir: str = "",
    preset: str = "auto",
    crop: int = 32,
    spacing: float = 2.0,
    per_class: int = 12,
    fractions: str | Sequence[float] = "1.0",
    runs: str | Sequence[str] = "pretrained_frozen,random_frozen,scratch_full",
    frozen_epochs: int = 40,
    frozen_lr: float = 3e-3,
    scratch_epochs: int = 4,
    scratch_lr: float = 1e-4,
    seed: int = 0,
    threads: int = 1,
    quiet: bool = True,
) -> dict[str, dict[str, Any]]:
    """Build the proxy task, train the probe for every run and fraction, print and return the AUC table.

    ``preset="auto"``: the preset of the ``pretrained`` checkpoint (``small`` without one), for every run.
    The frozen heads use ``frozen_lr`` (3e-3: the proxy has ~50 training rows, i.e. 6 steps per epoch;
    the bundle default is the paper's 1e-4).
    """
    if threads:
        torch.set_num_threads(int(threads))
    if preset == "auto":  # every run uses the pretrained encoder's architecture (small without weights)
        from components.network.release_checkpoint import preset_of_checkpoint

        preset = preset_of_checkpoint(pretrained, encoder_only=True) if pretrained else "small"
        print(f"preset: {preset}")
    out = Path(out_dir).resolve()
    if isinstance(fractions, (int, float)):
        fractions = [fractions]
    fr = [float(f) for f in (fractions.split(",") if isinstance(fractions, str) else fractions)]
    names = runs.split(",") if isinstance(runs, str) else list(runs)
    if "pretrained_frozen" in names and not pretrained:
        print("no --pretrained weights given: skipping the pretrained_frozen run", file=sys.stderr)
        names = [n for n in names if n != "pretrained_frozen"]
    t0 = time.time()
    n_eval = max(4, per_class * 2 // 3)
    datalist = build_proxy_task(
        out / "task",
        volumes=demo_volumes(data_dir or None),
        crop_size=(crop,) * 3,
        spacing=(spacing,) * 3,
        per_class={"train": per_class, "val": n_eval, "test": n_eval},
        seed=seed,
    )
    print(f"proxy task: {datalist} ({time.time() - t0:.1f} s)")
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        for f in fr:
            t1 = time.time()
            tag = f"{name}_f{f:g}"
            ov = {
                "dataset_dir": str(out / "task"),
                "preset": preset,
                "spacing": [spacing] * 3,
                "spatial_size": [crop] * 3,
                "fraction": f,
                "seed": seed,
                "output_dir": str(out / tag),
                "ckpt_dir": str(out / tag / "models"),
                "cache_dir": str(out / "feature_cache"),
                "pretrained": pretrained,
                "overwrite": True,  # the demo redoes its runs
                **RUNS[name],
            }
            frozen = ov["mode"] == "frozen"
            ov["train#trainer#max_epochs"] = frozen_epochs if frozen else scratch_epochs
            ov["learning_rate"] = frozen_lr if frozen else scratch_lr
            s = run_bundle(ov, BUNDLE, configs=("train.json", "demo.json"), quiet=quiet)
            s["seconds"] = round(time.time() - t1, 1)
            results[tag] = s
            per = ", ".join(f"{k} {v:.3f}" for k, v in s["best_auc_per_class"].items())
            print(
                f"{tag}: val mean AUC {s['best_mean_auc']:.3f} (best epoch {s['best_epoch']}, "
                f"{s['params']['train_rows']} train rows, {s['seconds']} s); per class: {per}",
                flush=True,
            )
    print("\nrun                 fraction  train rows  val mean AUC")
    for tag, s in results.items():
        print(
            f"{tag.rsplit('_f', 1)[0]:<19} {s['params']['fraction']:>8}  {s['params']['train_rows']:>10}"
            f"  {s['best_mean_auc']:.3f}"
        )
    atomic_json(out / "results.json", results)
    print(f"total {time.time() - t0:.1f} s; results in {out / 'results.json'}")
    return results


if __name__ == "__main__":
    fire.Fire({"demo": demo, "build": build}, serialize=lambda r: None)
