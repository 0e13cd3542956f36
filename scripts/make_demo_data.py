"""Derive the small embedded demo volumes in ``data/demo/`` from the shared real data pack.

The shared pack (``../shared/data``, see its README for provenance and licences) holds real NIfTI
volumes taken from Debian and PyPI packages. This script resamples and crops them so the whole demo
stays small in git, using only MONAI transforms:

* brain MRIs (Colin27, MNI152 2009a) + their SAMSEG label maps -> 2 mm isotropic, cropped to the head;
* the ITK example T1 (already 2x2x3 mm, LSA orientation) -> copied unchanged with its labels;
* the lung CT + tumour mask -> 1.5 x 1.5 mm in-plane (native 5 mm slices), cropped around the body;
* the head CT -> 2 mm isotropic, cropped to the head.

Run: ``.venv/bin/python scripts/make_demo_data.py [--shared ../shared/data] [--out data/demo]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.transforms import Compose, CropForegroundd, LoadImaged, Spacingd

ROOT = Path(__file__).resolve().parents[1]


def _save(arr: np.ndarray, affine: np.ndarray, path: Path, dtype: type) -> None:
    img = nib.Nifti1Image(np.asarray(arr).astype(dtype), np.asarray(affine, dtype=np.float64))
    img.set_sform(img.affine, code=1)
    img.set_qform(img.affine, code=1)
    img.header["scl_slope"], img.header["scl_inter"] = 1, 0
    nib.save(img, str(path))


def derive(
    image: Path,
    label: Path | None,
    spacing: tuple[float, ...] | None,
    threshold: float,
    out_image: Path,
    out_label: Path | None,
    margin: int = 2,
) -> None:
    keys = ["image"] + (["label"] if label is not None else [])
    xs = [LoadImaged(keys, ensure_channel_first=True, image_only=True)]
    if spacing is not None:
        xs.append(Spacingd(keys, pixdim=spacing, mode=["bilinear"] + ["nearest"] * (len(keys) - 1)))
    xs.append(
        CropForegroundd(keys, source_key="image", select_fn=lambda x: x > threshold, margin=margin, allow_smaller=True)
    )
    d = Compose(xs)({"image": str(image), **({"label": str(label)} if label is not None else {})})
    img = d["image"]
    _save(np.rint(img[0].numpy()), img.affine.numpy(), out_image, np.int16)
    if label is not None:
        lab = d["label"]
        _save(np.rint(lab[0].numpy()), lab.affine.numpy(), out_label, np.int16)
    print(f"{out_image.name}: {tuple(img.shape[1:])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "demo")
    a = ap.parse_args()
    src, out = a.shared, a.out
    out.mkdir(parents=True, exist_ok=True)
    mri = src / "mri"
    derive(
        mri / "colin27_t1.nii.gz",
        mri / "colin27_samseg.nii.gz",
        (2.0, 2.0, 2.0),
        5,
        out / "colin27_t1.nii.gz",
        out / "colin27_seg.nii.gz",
    )
    derive(
        mri / "mni152_t1.nii.gz",
        mri / "mni152_samseg.nii.gz",
        (2.0, 2.0, 2.0),
        5,
        out / "mni152_t1.nii.gz",
        out / "mni152_seg.nii.gz",
    )
    shutil.copyfile(mri / "itk_t1.nii.gz", out / "itk_t1.nii.gz")
    shutil.copyfile(mri / "itk_samseg.nii.gz", out / "itk_seg.nii.gz")
    derive(
        src / "ct" / "lung1_ct.nii.gz",
        src / "ct" / "lung1_tumor.nii.gz",
        (1.5, 1.5, 5.0),
        -500,
        out / "lung1_ct.nii.gz",
        out / "lung1_tumor.nii.gz",
    )
    derive(src / "ct" / "head_ct.nii.gz", None, (2.0, 2.0, 2.0), -500, out / "head_ct.nii.gz", None)
    shutil.copyfile(src / "labels_samseg.json", out / "labels.json")
    datalist = {
        "mri": [
            {"image": f"{n}_t1.nii.gz", "label": f"{n}_seg.nii.gz", "modality": "MR"}
            for n in ("colin27", "mni152", "itk")
        ],
        "ct": [
            {"image": "lung1_ct.nii.gz", "label": "lung1_tumor.nii.gz", "modality": "CT"},
            {"image": "head_ct.nii.gz", "modality": "CT"},
        ],
    }
    datalist["all"] = [{k: v for k, v in d.items() if k != "label"} for d in datalist["mri"] + datalist["ct"]]
    (out / "datalist.json").write_text(json.dumps(datalist, indent=1) + "\n")


if __name__ == "__main__":
    main()
