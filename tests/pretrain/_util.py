"""Shared helpers for the pretraining tests: mask sets from real label maps, a tiny bundle run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from components.data.loading import load_volume
from components.io.maskset import write_maskset
from tests._bundles import REPO

BUNDLE = REPO / "bundles" / "mass_pretrain"
DEMO = REPO / "data" / "demo"


def masksets_from_labels(
    out_dir: Path, names: tuple[str, ...] = ("colin27", "mni152"), max_ids: int | None = None
) -> Path:
    """One mask-set file per demo brain: every label id of its segmentation is one mask."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for n in names:
        lab = load_volume(DEMO / f"{n}_seg.nii.gz")
        a = lab[0].numpy().astype(int)
        ids = [int(i) for i in np.unique(a) if i > 0][:max_ids]
        write_maskset(
            out_dir / f"{n}_t1.mset",
            [a == i for i in ids],
            np.asarray(lab.affine),
            provenance=[{"source": "label", "id": i} for i in ids],
            image_path=str(DEMO / f"{n}_t1.nii.gz"),
        )
    return out_dir


def tiny_overrides(tmp: Path, mask_dir: Path, **extra: Any) -> dict[str, Any]:
    """Bundle overrides for a seconds-long CPU run of the tiny preset (32^3 crops at 3 mm)."""
    tmp.mkdir(parents=True, exist_ok=True)
    datalist = tmp / "datalist.json"
    datalist.write_text(
        json.dumps(
            {
                "all": [
                    {"image": str(DEMO / "colin27_t1.nii.gz"), "modality": "MR"},
                    {"image": str(DEMO / "mni152_t1.nii.gz"), "modality": "MR"},
                ]
            }
        )
    )
    ov = {
        "bundle_root": str(BUNDLE),
        "datalist": str(datalist),
        "mask_dir": str(mask_dir),
        "output_dir": str(tmp / "eval"),
        "ckpt_dir": str(tmp / "models"),
        "preset": "tiny",
        "spacing": [3.0, 3.0, 3.0],
        "crop_size": [32, 32, 32],
        "context_margin": 8,
        "max_masks": 4,
        "batch_size": 1,
        "num_workers": 0,
        "iters_per_epoch": 2,
        "max_epochs": 2,
        "num_val_samples": 1,
        "val_names": ["mni152_t1"],
        "val_label_pairs": [],
        "progress_bar": False,
        "lr": 0.002,
    }
    ov.update(extra)
    return ov
