"""Pretraining data pipeline, samples/s: the bundle's two-view dataset against the authors' release's.

Both sides draw training samples (reference view + target view, 13 masks, 128^3 crops from a 168^3 context,
the paper's setting) from the same two volumes and masks (the shared Colin27 / MNI152 MRIs, every SAMSEG
label a mask), resampled to 1.5 mm once beforehand (not timed, as both pipelines do it offline), each side
in its own process, ``DataLoader`` with 0 workers (the per-sample cost of one worker):

* ``release``: its ``MaskGuidedSelfSupervisedDataset`` (images as ``<name>_image.npy``, masks in
  ``dataset.h5`` as its preprocessing writes them; its augmentation defaults and ``overlap_ratio`` 0.67);
* ``ours``: ``MaskPretrainDataset`` + ``TwoViewSampler`` as ``mass_pretrain/configs/train.json`` wires them
  (its resampled cache prepared before timing).

The first sample is excluded (imports, file opening); then ``--samples`` samples are timed.

    python benchmarks/pretrain_data_vs_release.py --release_dir /path/to/MASS --extra_path DIR \\
        --out benchmarks/results/pretrain_data_vs_release_cpu.json

``DIR`` holds the release's extra imports (``pip install --target DIR einops h5py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vs_release import _machine, cli, write_result

MAX_MASKS = 13


def _prepare(work: Path) -> list[dict[str, str]]:
    """Our mask sets (every SAMSEG label) and the release's files (1.5 mm npy image + dataset.h5 masks)."""
    import h5py
    from monai.transforms import Compose, LoadImaged, Orientationd, Spacingd
    from pretrain_throughput import make_masks

    data = make_masks(work)
    to_grid = Compose(
        [
            LoadImaged(("image", "label"), ensure_channel_first=True, image_only=True),
            Orientationd(("image", "label"), axcodes="RAS"),
            Spacingd(("image", "label"), pixdim=(1.5,) * 3, mode=("bilinear", "nearest")),
        ]
    )
    root = work / "release" / "demo"
    root.mkdir(parents=True)
    with h5py.File(root / "dataset.h5", "w") as h5:
        for item in data:
            name = Path(item["image"]).name.split(".")[0]
            d = to_grid({"image": item["image"], "label": item["image"].replace("_t1.", "_samseg.")})
            np.save(root / f"{name}_image.npy", d["image"][0].numpy().astype(np.float32))
            lab = d["label"][0].numpy().astype(np.int32)
            masks = np.stack([lab == i for i in np.unique(lab) if i > 0]).astype(np.uint8)
            h5.create_group(name).create_dataset("auto_masks", data=masks, compression="gzip", chunks=True)
    return data


def _time_loader(loader: Any, samples: int) -> float:
    it = iter(loader)
    next(it)  # first sample excluded
    t0 = time.perf_counter()
    for _ in range(samples):
        next(it)
    return samples / (time.perf_counter() - t0)


def worker(side: str, work: str, samples: int, threads: int, release_dir: str = "", extra_path: str = "") -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    np.random.seed(0)
    w = Path(work)
    if side == "release":
        sys.path[:0] = [p for p in (release_dir, extra_path) if p]
        from data.dataset_ss import MaskGuidedSelfSupervisedDataset  # the release's own dataset

        ds = MaskGuidedSelfSupervisedDataset(
            data_root=str(w / "release"),
            datasets=["demo"],
            training_size=(128, 128, 128),
            max_in_batch=MAX_MASKS,
            augmentation_config={"overlap_ratio": 0.67},
        )
        loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=True, num_workers=0)
        rate = _time_loader(loader, samples)
    else:
        from components.pretrain.dataset import MaskPretrainDataset
        from components.pretrain.sampler import TwoViewSampler

        data = json.loads((w / "data.json").read_text())  # the cache is filled here, before timing
        ds = MaskPretrainDataset(
            data, w / "cache", spacing=(1.5,) * 3, crop_size=(128,) * 3, context_margin=40, max_masks=MAX_MASKS
        )
        loader = torch.utils.data.DataLoader(ds, batch_size=1, sampler=TwoViewSampler(ds, samples + 1))
        rate = _time_loader(loader, samples)
    (w / f"{side}.json").write_text(json.dumps({"samples_per_s": rate}))


def main(release_dir: str, extra_path: str = "", samples: int = 20, threads: int = 1, out: str = "") -> dict[str, Any]:
    """Prepare the shared data, time both sides, print the line and write ``out`` (JSON) if given."""
    if not (Path(release_dir) / "data" / "dataset_ss.py").is_file():
        raise SystemExit(f"{release_dir}: not a clone of Stanford-AIMI/MASS (no data/dataset_ss.py)")
    sys.path[:0] = [extra_path] if extra_path else []  # h5py, to write the release's files
    res: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as work:
        data = _prepare(Path(work))
        (Path(work) / "data.json").write_text(json.dumps(data))
        for side in ("release", "ours"):
            cmd = [sys.executable, __file__, "worker", side, work, str(samples), str(threads)]
            cmd += ["--release_dir", release_dir, "--extra_path", extra_path]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
            res[side] = json.loads((Path(work) / f"{side}.json").read_text())["samples_per_s"]
    ratio = round(res["ours"] / res["release"], 3)
    print(
        f"two-view samples (13 masks, 128^3 from 168^3, 1.5 mm), 0 workers, {threads} thread(s): "
        f"release {res['release']:.2f}, ours {res['ours']:.2f} samples/s (x{ratio})",
        flush=True,
    )
    result = {
        "machine": _machine(),
        "settings": {"samples": samples, "threads": threads, "masks": MAX_MASKS, "crop": 128, "context": 168},
        "samples_per_s": res,
        "ratio_ours_over_release": ratio,
    }
    return write_result(out, result)


if __name__ == "__main__":
    cli(main, worker)
