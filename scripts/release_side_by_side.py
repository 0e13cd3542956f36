"""Rung R1 (copy task) of the learning ladder on the authors' own pretraining loop, beside ours.

Runs the release's code from a checkout the user supplies (``--release_dir``: a clone of
``Stanford-AIMI/MASS``, plus its ``h5py``, ``SimpleITK``, ``einops`` and ``tensorboard`` on
``--extra_path``); none of it is part of this project. Two steps, both CPU-only:

1. **prepare**: the demo brains the ladder trains on (Colin27, ITK) go through the release's own
   ``preprocessing/mass_preprocessing/prepare_training_data.py``: each T1 as ``<name>.nii.gz``, its
   label map as the auto-label volume ``<name>_labels_nms_vol0.nii.gz`` (one mask per label id,
   as the ladder's masks), resampled to ``--spacing`` (padded to ``crop`` where smaller). Out
   come the release's ``<name>_image.npy`` and ``dataset.h5``.
2. **train**: the release's ``mask_guided_self_supervised`` trainer, built from its own
   ``config/pretrain/mask_guided_self_supervised.yaml`` with the ladder's R1 settings (network of
   the ``small`` preset's widths and blocks (the release's attention needs >= 32 channels in the
   three deepest stages, so ``tiny`` cannot be built there), ``crop``\\ ³ windows, ``max_masks`` masks, batch,
   LAMB lr, one-cycle over ``iters``, EMA 0.99, its Dice + BCE loss, gradient clipping) and only
   what a CPU and the copy task need: float32 (no bf16 autocast), no workers, no in-context
   evaluation, and both views identical (overlap 1.0, no augmentation: the release's own
   augmentation step is replaced by its random crop drawn once for both views: the same box).
   Its ``_train_epoch`` runs ``eval_every`` iterations at a time; after each, raw and EMA weights
   are scored with the ladder's ``channel_scores`` on fixed samples drawn from the release's
   dataset before training (random mask choices never trained on), and ``curve.json`` /
   ``curve.png`` are written in the ladder's format. Resumable (``state.pt`` every evaluation,
   read with ``weights_only=True``).

Example::

    .venv/bin/python scripts/release_side_by_side.py --release_dir /path/to/MASS \\
        --extra_path /path/to/site-packages --out_dir experiments/ladder/r1_small_release --minutes 90
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch

from scripts.learning_ladder import DEMO, TRAIN_VOLUMES, channel_scores, plot

PINNED_MEMORY_SHIM = "import torch\ntorch.Tensor.pin_memory = lambda self, *a, **k: self\n"


def prepare(release: Path, extra_path: str, work: Path, spacing: float, min_size: int) -> Path:
    """The release's prepared format (``dataset.h5`` + ``*_image.npy``) of the training brains."""
    root = work / "mass_h5"
    out = root / "demo_brains"
    if (out / "dataset.h5").is_file():
        return root
    nii, auto, shim = work / "nii", work / "auto", work / "shim"
    for d in (nii, auto, shim):
        d.mkdir(parents=True, exist_ok=True)
    for name in TRAIN_VOLUMES:
        shutil.copyfile(DEMO / f"{name}_t1.nii.gz", nii / f"{name}.nii.gz")
        shutil.copyfile(DEMO / f"{name}_seg.nii.gz", auto / f"{name}_labels_nms_vol0.nii.gz")
        (auto / f"{name}_labels_nms_mapping.json").write_text("{}")
    # its resampler pins host memory, which needs CUDA; its worker processes import this at start-up
    (shim / "sitecustomize.py").write_text(PINNED_MEMORY_SHIM)
    cmd = [
        sys.executable, "-m", "mass_preprocessing.prepare_training_data",
        "--data_dir", str(nii), "--auto_label_dir", str(auto), "--output_dir", str(out),
        "--target_spacing", *[str(spacing)] * 3, "--modality", "mr", "--min_size", str(min_size),
        "--skip_gt_labels",
    ]  # fmt: skip
    env = {"PYTHONPATH": ":".join([str(shim), extra_path, str(release)]), "OMP_NUM_THREADS": "1", "PATH": ""}
    subprocess.run(cmd, cwd=release / "preprocessing", env=env, check=True)
    if not (out / "dataset.h5").is_file():
        raise RuntimeError(f"{out}: the release's preparation wrote no dataset.h5")
    return root


def release_config(release: Path, data_root: Path, out: Path, a: dict[str, Any]) -> dict:
    """The release's pretraining YAML with the ladder's R1 settings."""
    import yaml

    cfg = yaml.safe_load((release / "config" / "pretrain" / "mask_guided_self_supervised.yaml").read_text())
    crop, epochs = int(a["crop"]), max(1, int(a["iters"]) // int(a["eval_every"]))
    cfg["seed"] = int(a["seed"])
    cfg["run"] = {"output_dir": str(out / "release_run")}
    cfg["data"]["train"].update(
        {
            "data_root": str(data_root),
            "datasets": ["demo_brains"],
            "max_in_batch": int(a["max_masks"]),
            "training_size": [crop] * 3,  # the dataset's own default is 128^3
        }
    )
    cfg["data"].pop("incontext", None)
    cfg["data"]["loader"].update(
        {"batch_size": int(a["batch"]), "num_workers": 0, "pin_memory": False, "persistent_workers": False}
    )
    cfg["model"].update({"channels": list(a["channels"]), "num_block": list(a["num_blocks"]), "tn": int(a["tn"])})
    cfg["training_size"] = [crop] * 3
    cfg["epochs"], cfg["max_iter_per_epoch"] = epochs, int(a["eval_every"])
    cfg["optimizer"]["lr"] = cfg["scheduler"]["max_lr"] = float(a["lr"])
    cfg["augmentation"]["overlap_ratio"] = 1.0
    cfg["amp"]["enabled"] = False
    cfg["compile"]["enabled"] = False
    return cfg


def main(
    release_dir: str,
    extra_path: str = "",
    out_dir: str = "experiments/ladder/r1_small_release",
    crop: int = 32,
    spacing: float = 4.0,
    max_masks: int = 6,
    batch: int = 2,
    lr: float = 0.002,
    iters: int = 2000,
    eval_every: int = 100,
    eval_samples: int = 8,
    minutes: float = 60.0,
    threads: int = 1,
    seed: int = 0,
    channels: tuple[int, ...] = (8, 16, 32, 64, 128),
    num_blocks: tuple[int, ...] = (2, 2, 2, 2),
    tn: int = 73,
) -> dict:
    """Prepare the release's data, then run its trainer on R1 until ``iters`` or ``minutes``; the summary."""
    args = dict(locals())
    release = Path(release_dir).resolve()
    if not (release / "training" / "trainer_ss.py").is_file():
        raise FileNotFoundError(f"--release_dir {release}: no training/trainer_ss.py (a clone of Stanford-AIMI/MASS?)")
    torch.set_num_threads(int(threads))
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_root = prepare(release, extra_path, out / "release_data", float(spacing), int(crop))
    sys.path[:0] = [p for p in (str(release), extra_path) if p]
    import metrics  # noqa: F401
    import models  # noqa: F401
    import utils  # noqa: F401
    from data.dataset_ss import MaskGuidedSelfSupervisedDataset
    from training.trainer_ss import MaskGuidedSelfSupervisedTrainer
    from utils.distributed import set_seed

    import data  # noqa: F401  (the release's registries fill on import)
    from data import augmentation

    def same_box(self: Any, image: torch.Tensor, mask: torch.Tensor, aug_type: str) -> tuple:
        # the reference view draws a random box; the target view replays that draw: the same box
        if aug_type == "weak":
            self._box_rng = np.random.get_state()
        else:
            np.random.set_state(self._box_rng)
        img, lab = augmentation.crop_3d(image[None, None].float(), mask[None].float(), self.training_size, "random")
        return img[0, 0].contiguous(), lab[0].contiguous()

    MaskGuidedSelfSupervisedDataset._apply_augmentation = same_box  # copy task: identical views, no augmentation
    cfg = release_config(release, data_root, out, args)
    set_seed(int(seed))
    trainer = MaskGuidedSelfSupervisedTrainer(cfg)
    ds = trainer.train_loader.dataset
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    set_seed(10**6 + int(seed))  # evaluation samples: fixed, drawn apart from the training stream
    samples = [ds[i % len(ds.file_list)] for i in range(max(batch, eval_samples))]
    random.setstate(rng[0]), np.random.set_state(rng[1]), torch.set_rng_state(rng[2])
    evals = [[torch.stack(x) for x in zip(*samples[i : i + batch])] for i in range(0, len(samples), batch)]

    @torch.no_grad()
    def score(net: torch.nn.Module) -> dict:
        was = net.training
        net.eval()
        logits = [net(t_img, r_img, r_mask) for t_img, _, r_img, r_mask in evals]
        net.train(was)
        refs, tgts = torch.cat([e[3] for e in evals]), torch.cat([e[1] for e in evals])
        return channel_scores(torch.cat(logits), refs, tgts, torch.ones(refs.shape[:2], dtype=torch.bool))

    curve_file, state_file = out / "curve.json", out / "state.pt"
    state = json.loads(curve_file.read_text()) if curve_file.is_file() else {"rows": [], "reached": None}
    epoch = 0
    if state_file.is_file():
        ck = torch.load(state_file, map_location="cpu", weights_only=True)
        trainer.model.load_state_dict(ck["model"])
        trainer.ema_model.load_state_dict(ck["ema_model"])
        trainer.optimizer.load_state_dict(ck["optimizer"])
        trainer.scheduler.load_state_dict(ck["scheduler"])
        trainer.current_iter = int(ck["iteration"])
        epoch = trainer.current_iter // int(eval_every)
        torch.set_rng_state(ck["torch_rng"])
        np.random.seed(int(ck["iteration"]) + int(seed))
        random.seed(int(ck["iteration"]) + int(seed))
    state["rows"] = [r for r in state["rows"] if r["iteration"] <= trainer.current_iter]
    settings = {
        "rung": "R1", "trainer": "release", "preset": "small" if tuple(channels) == (8, 16, 32, 64, 128) else "custom", "optimizer": "lamb", "lr": lr, "crop": crop,
        "spacing": spacing, "max_masks": max_masks, "batch": batch, "seed": seed, "channels": list(channels),
    }  # fmt: skip
    state["settings"] = settings
    t_start, seconds_before = time.time(), (state["rows"][-1]["seconds"] if state["rows"] else 0.0)
    while epoch < cfg["epochs"] and time.time() - t_start < 60 * float(minutes):
        trainer._train_epoch(epoch)
        epoch += 1
        with torch.no_grad():
            out_ = trainer.model(*[evals[0][k] for k in (0, 2, 3)])
            loss = float(trainer._compute_loss(out_, evals[0][1])[0])
        row = {
            "iteration": trainer.current_iter,
            "seconds": round(seconds_before + time.time() - t_start, 1),
            "loss": loss,
            "lr": float(trainer.optimizer.param_groups[0]["lr"]),
            "raw": score(trainer.model),
            "ema": score(trainer.ema_model),
        }
        state["rows"].append(row)
        best = max((row[w]["real_dice_mean"] or 0.0) for w in ("raw", "ema"))
        if state["reached"] is None and best >= 0.5:
            state["reached"] = {"iteration": row["iteration"], "seconds": row["seconds"], "dice": best}
        tmp = state_file.with_suffix(".tmp")
        torch.save(
            {
                "model": trainer.model.state_dict(),
                "ema_model": trainer.ema_model.state_dict(),
                "optimizer": trainer.optimizer.state_dict(),
                "scheduler": trainer.scheduler.state_dict(),
                "iteration": trainer.current_iter,
                "torch_rng": torch.get_rng_state(),
            },
            tmp,
        )
        tmp.replace(state_file)
        curve_file.write_text(json.dumps(state, indent=1))
        plot(
            state["rows"],
            f"R1 release trainer, {settings['preset']} lamb lr {lr} {crop}^3 {spacing} mm, {max_masks} masks",
            out / "curve.png",
        )
        print(
            f"it {row['iteration']} {row['seconds']:.0f}s loss {loss:.3f} ema {row['ema']} raw {row['raw']}", flush=True
        )
    rows = state["rows"]
    state["summary"] = {
        "settings": settings,
        "reached": state["reached"],
        "iterations": rows[-1]["iteration"] if rows else 0,
        "hours": round((rows[-1]["seconds"] if rows else 0.0) / 3600, 2),
        "target": "mean real-channel Dice >= 0.5",
    }
    curve_file.write_text(json.dumps(state, indent=1))
    return state["summary"]


if __name__ == "__main__":
    fire.Fire(main)
