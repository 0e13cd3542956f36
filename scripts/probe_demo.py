"""The probe stage's proxy task from the repository's labelled brain MRIs (``data/demo``): crops centred on
ventricles, thalamus, cerebellum or brain stem, one scan per split (Colin27 train, ITK T1 validation,
MNI152 test). The demo (``scripts/demo.sh``) then runs the ``mass_probe`` bundle's sweep on it::

    .venv/bin/python scripts/probe_demo.py --out_dir demo_output/probe/task --spacing 3.0
    cd bundles/mass_probe
    ../../.venv/bin/python -m monai.bundle run --config_file "['configs/sweep.json','configs/demo.json']" \\
        --logging_file configs/logging.conf --dataset_dir ../../demo_output/probe/task \\
        --output_dir ../../demo_output/probe --pretrained ../../demo_output/pretrain/models/model.pt

Prints the datalist's path.
"""

from __future__ import annotations

from pathlib import Path

import fire

from components.probe.proxy import build_proxy_task

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_VOLUMES = [  # (image, label, split) in data/demo: a different scan per split
    ("colin27_t1.nii.gz", "colin27_seg.nii.gz", "train"),  # Colin27 average, whole head
    ("itk_t1.nii.gz", "itk_seg.nii.gz", "val"),  # individual scan, whole head, 2x2x3 mm
    ("mni152_t1.nii.gz", "mni152_seg.nii.gz", "test"),  # MNI152 2009a, skull-stripped
]


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
    """Write the proxy task (``per_class`` training crops per structure, 2/3 as many for validation and
    test, at least 4); returns the datalist path."""
    n_eval = max(4, per_class * 2 // 3)
    path = build_proxy_task(
        out_dir,
        volumes=demo_volumes(data_dir or None),
        crop_size=(crop,) * 3,
        spacing=(spacing,) * 3,
        per_class={"train": per_class, "val": n_eval, "test": n_eval},
        seed=seed,
    )
    print(path)
    return str(path)


if __name__ == "__main__":
    fire.Fire(build, serialize=lambda r: None)
