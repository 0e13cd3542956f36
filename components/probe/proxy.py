"""A real proxy classification task for the probe: brain-MRI crops labelled by the structure at their centre.

No public classification data set is reachable here, so the task is built from the real labelled
brain MRIs (SAMSEG label maps): each crop (``crop_size`` voxels at ``spacing`` mm, RAS) is centred
on a random voxel of one structure plus a random jitter of up to ``jitter_mm`` per axis, and is
labelled with that structure. Default classes (FreeSurfer ids): ventricles (4, 43), thalamus
(10, 49), cerebellum (7, 8, 46, 47), brain stem (16). Volumes are assigned to splits as a whole
(different subjects/scans for train, validation and test).

Outputs in ``out_dir``: ``crops/*.nii.gz`` (int16), ``datalist.csv`` (multiclass: ``image, label,
modality, split, volume``) and ``datalist_multilabel.csv`` (one 0/1 column per structure: present
with at least ``presence_voxels`` voxels in the crop).

CLI: ``python -m components.probe.proxy build --out_dir runs/probe_proxy`` and
``python -m components.probe.proxy demo --pretrained <weights>`` (see the bundle README).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import BorderPad, SpatialCrop

from components.data.loading import load_transforms
from components.io.atomic import atomic_json, atomic_write
from components.io.naming import volume_stem

STRUCTURES: dict[str, list[int]] = {
    "ventricles": [4, 43],
    "thalamus": [10, 49],
    "cerebellum": [7, 8, 46, 47],
    "brain_stem": [16],
}
REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_VOLUMES = [  # (image, label, split) in data/demo: a different scan per split
    ("colin27_t1.nii.gz", "colin27_seg.nii.gz", "train"),  # Colin27 average, whole head
    ("itk_t1.nii.gz", "itk_seg.nii.gz", "val"),  # individual scan, whole head, 2x2x3 mm
    ("mni152_t1.nii.gz", "mni152_seg.nii.gz", "test"),  # MNI152 2009a, skull-stripped
]


def demo_volumes(data_dir: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """The three labelled brain MRIs of ``data/demo`` with their split."""
    root = Path(data_dir) if data_dir else REPO_ROOT / "data" / "demo"
    return [{"image": str(root / i), "label": str(root / s), "split": sp} for i, s, sp in DEMO_VOLUMES]


def _write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(np.round(array).astype(np.int16), affine)
    atomic_write(path, lambda tmp: nib.save(image, tmp), suffix=".tmp.nii.gz")


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    def writer(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)

    atomic_write(path, writer)


def crop_centres(
    label: np.ndarray, ids: Sequence[int], n: int, jitter_vox: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``n`` crop centres ``[n, 3]``: random voxels of the structure plus uniform jitter (voxels)."""
    coords = np.argwhere(np.isin(label, list(ids)))
    if len(coords) == 0:
        raise ValueError(f"structure ids {list(ids)} are absent")
    pick = coords[rng.integers(0, len(coords), size=n)]
    jitter = np.rint(rng.uniform(-1.0, 1.0, size=(n, 3)) * jitter_vox).astype(int)
    return np.clip(pick + jitter, 0, np.asarray(label.shape) - 1)


def build_proxy_task(
    out_dir: str | os.PathLike,
    volumes: Sequence[Mapping[str, str]] | None = None,
    structures: Mapping[str, Sequence[int]] | None = None,
    crop_size: Sequence[int] = (32, 32, 32),
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    per_class: int | Mapping[str, int] = 12,
    jitter_mm: float = 4.0,
    presence_voxels: int = 20,
    seed: int = 0,
) -> Path:
    """Write the crops and datalists; returns the path of ``datalist.csv``.

    ``volumes``: ``[{"image", "label", "split"}]`` (default: :func:`demo_volumes`). ``per_class``:
    crops per structure and volume, an int or a mapping split -> int.
    """
    out = Path(out_dir)
    (out / "crops").mkdir(parents=True, exist_ok=True)
    volumes = list(volumes or demo_volumes())
    structures = dict(structures or STRUCTURES)
    size = np.asarray(crop_size, dtype=int)
    rng = np.random.default_rng(seed)
    load = load_transforms(("image", "label"), spacing=tuple(spacing))
    pad = BorderPad(spatial_border=[int(s) for s in size for _ in (0, 1)], mode="constant")
    rows: list[dict[str, Any]] = []
    for vol in volumes:
        d: Any = {"image": vol["image"], "label": vol["label"]}
        for t in load:
            d = t(d)
        image, label = d["image"], d["label"]
        fill = float(image.min())
        image_p = pad(image - fill) + fill  # pad with the volume minimum (background)
        label_p = pad(label)
        lab_np = label[0].numpy().astype(np.int32)
        name = volume_stem(vol["image"])
        split = vol.get("split", "train")
        n = per_class[split] if isinstance(per_class, Mapping) else int(per_class)
        for cls, ids in structures.items():
            centres = crop_centres(lab_np, ids, n, np.asarray(jitter_mm) / np.asarray(spacing, float), rng)
            for k, c in enumerate(centres):
                crop = SpatialCrop(roi_center=[int(v) for v in c + size], roi_size=[int(v) for v in size])
                img_c, lab_c = crop(image_p), crop(label_p)
                path = out / "crops" / f"{name}_{cls}_{k:03d}.nii.gz"
                _write_nifti(img_c[0].numpy(), np.asarray(img_c.affine), path)
                lab_arr = lab_c[0].numpy()
                present = {s: int(np.isin(lab_arr, list(i)).sum() >= presence_voxels) for s, i in structures.items()}
                rows.append(
                    {
                        "image": f"crops/{path.name}",
                        "label": cls,
                        "modality": "MR",
                        "split": split,
                        "volume": name,
                        **present,
                    }
                )
    names = list(structures)
    _write_csv(
        out / "datalist.csv",
        ["image", "label", "modality", "split", "volume"],
        [[r["image"], r["label"], r["modality"], r["split"], r["volume"]] for r in rows],
    )
    _write_csv(
        out / "datalist_multilabel.csv",
        ["image", *names, "modality", "split", "volume"],
        [[r["image"], *[r[s] for s in names], r["modality"], r["split"], r["volume"]] for r in rows],
    )
    atomic_json(
        out / "classes.json",
        {
            "classes": names,
            "label_ids": structures,
            "crop_size": [int(s) for s in size],
            "spacing": [float(s) for s in spacing],
            "jitter_mm": jitter_mm,
            "seed": seed,
        },
    )
    return out / "datalist.csv"


# -- demo: pretrained-frozen vs baselines through the bundle -----------------------------------

BUNDLE = REPO_ROOT / "bundles" / "mass_probe"
RUNS = {  # name -> bundle overrides (the pretrained weights are added for "pretrained")
    "pretrained_frozen": {"mode": "frozen"},
    "random_frozen": {"mode": "frozen", "pretrained": ""},
    "scratch_full": {"mode": "scratch", "pretrained": ""},
}


def run_bundle(
    overrides: Mapping[str, Any], bundle: str | os.PathLike = BUNDLE, quiet: bool = False, **kwargs: Any
) -> dict[str, Any]:
    """Run ``configs/train.json`` of the bundle with ``overrides``; returns its ``summary.json``.

    ``quiet`` keeps only warnings on the console; ``kwargs`` go to ``ConfigWorkflow`` (e.g. ``tracking``).
    """
    import logging

    from monai.bundle import ConfigWorkflow

    bundle = Path(bundle)
    wf = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.json"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type="train",
        bundle_root=str(bundle),
        **kwargs,
        **dict(overrides),
    )
    wf.initialize()
    if quiet:
        wf.parser.get_parsed_content("train#trainer")  # handlers create their loggers when instantiated
        for name in (
            "",
            "ignite",
            "ignite.engine.engine.SupervisedTrainer",
            "ignite.engine.engine.SupervisedEvaluator",
            "components.probe.features",
        ):
            logging.getLogger(name).setLevel(logging.WARNING)
        for logger in [logging.getLogger(), *logging.root.manager.loggerDict.values()]:
            if isinstance(logger, logging.Logger):
                logger.setLevel(logging.WARNING)
    wf.run()
    wf.finalize()
    return json.loads((Path(wf.parser.get_parsed_content("output_dir")) / "summary.json").read_text())


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
    Runs: ``pretrained_frozen`` (the ``pretrained`` encoder, frozen), ``random_frozen`` (random
    encoder, frozen: the floor a pretrained encoder must beat) and ``scratch_full`` (random encoder
    trained with the head: the paper's "full training" baseline). The frozen heads use
    ``frozen_lr`` (3e-3: the proxy has ~50 training rows, i.e. 6 steps per epoch; the bundle
    default is the paper's 1e-4).
    """
    if threads:
        torch.set_num_threads(int(threads))
    if preset == "auto":  # every run uses the pretrained encoder's architecture (small without weights)
        from components.probe.features import preset_of_checkpoint

        preset = preset_of_checkpoint(pretrained) if pretrained else "small"
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
                "datalist": str(datalist),
                "preset": preset,
                "spacing": [spacing] * 3,
                "spatial_size": [crop] * 3,
                "fraction": f,
                "seed": seed,
                "output_dir": str(out / tag),
                "ckpt_dir": str(out / tag / "models"),
                "cache_dir": str(out / "feature_cache"),
                "pretrained": pretrained,
                **RUNS[name],
            }
            frozen = ov["mode"] == "frozen"
            ov["train#trainer#max_epochs"] = frozen_epochs if frozen else scratch_epochs
            ov["learning_rate"] = frozen_lr if frozen else scratch_lr
            s = run_bundle(ov, quiet=quiet)
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


def build(
    out_dir: str = "demo_output/probe/task",
    data_dir: str = "",
    crop: int = 32,
    spacing: float = 2.0,
    per_class: int = 12,
    seed: int = 0,
) -> str:
    """CLI: build the proxy task only; prints the datalist path."""
    path = build_proxy_task(
        out_dir,
        volumes=demo_volumes(data_dir or None),
        crop_size=(crop,) * 3,
        spacing=(spacing,) * 3,
        per_class=per_class,
        seed=seed,
    )
    return str(path)


if __name__ == "__main__":
    import fire

    fire.Fire({"build": build, "demo": demo}, serialize=lambda r: None)
