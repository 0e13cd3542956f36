"""A real proxy classification task for the probe: brain-MRI crops labelled by the structure at their centre.

No public classification data set is reachable here, so the task is built from the real labelled
brain MRIs (SAMSEG label maps): each crop (``crop_size`` voxels at ``spacing`` mm, RAS) is centred
on a random voxel of one structure plus a random jitter of up to ``jitter_mm`` per axis, and is
labelled with that structure. Default classes (FreeSurfer ids): ventricles (4, 43), thalamus
(10, 49), cerebellum (7, 8, 46, 47), brain stem (16). Volumes are assigned to splits as a whole
(different subjects/scans for train, validation and test).

Outputs in ``out_dir``: ``crops/*.nii.gz`` (int16), ``datalist.csv`` (multiclass: ``image, label,
modality, split, volume``) and ``datalist_multilabel.csv`` (one 0/1 column per structure: present
with at least ``presence_voxels`` voxels in the crop), and ``classes.json`` (``{"classes": [...]}``, what
the bundle's ``configs/train.json`` reads beside its datalist).

The repository's demo task builder is ``scripts/probe_demo.py``; the comparison of encoders is ``components/probe/sweep.py``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
from monai.data import MetaTensor
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
    volumes: Sequence[Mapping[str, str]],
    structures: Mapping[str, Sequence[int]] | None = None,
    crop_size: Sequence[int] = (32, 32, 32),
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    per_class: int | Mapping[str, int] = 12,
    jitter_mm: float = 4.0,
    presence_voxels: int = 20,
    seed: int = 0,
) -> Path:
    """Write the crops and datalists; returns the path of ``datalist.csv``.

    ``volumes``: ``[{"image", "label", "split"}]`` (labelled volumes). ``per_class``:
    crops per structure and volume, an int or a mapping split -> int.
    """
    out = Path(out_dir)
    (out / "crops").mkdir(parents=True, exist_ok=True)
    volumes = list(volumes)
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
                _write_nifti(img_c[0].numpy(), np.asarray(cast(MetaTensor, img_c).affine), path)
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
