"""GPU pretraining check: does the mass_pretrain bundle learn at GPU scale, and how fast is it?

One script that fits in 8 minutes on one H100/H200 (the defaults). First the learning ladder's rungs
R1 (copy task) and R2 (pretext task) of ``scripts/learning_ladder.py`` on the ``small`` preset,
``--ladder_minutes`` each (iterations to mean real-channel Dice 0.5, or how far they came). Then R3,
transfer: SLIC masks of the real volumes
(maskgen bundle), then the pretrain bundle's own training (release objective and sampling, bf16
autocast on CUDA) of the ``small`` preset at 96^3 and 1.5 mm, with the held-out in-context Dice curve
of MNI152 from Colin27 (``scripts/pretrain_experiment.py``), and samples/s of the data pipeline and of
the training step measured separately (Ignite's GET_BATCH vs ITERATION events). Writes one JSON file.

On CPU it runs with tiny settings (the tested path)::

    python benchmarks/gpu_pretrain_check.py --out gpu_check.json                     # GPU defaults
    python benchmarks/gpu_pretrain_check.py --preset tiny --crop 32 --spacing 4 \\
        --iters_per_epoch 4 --max_epochs 2 --minutes 5 --ladder_crop 32 --ladder_spacing 4 \\
        --ladder_batch 1 --ladder_iters 4 --ladder_eval_every 2 --out /tmp/cpu_check.json   # CPU smoke run

Data: ``../shared/data`` when present, else the repository's ``data/demo`` (the same volumes at 2 mm).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import torch
from _machine import cpu_name  # noqa: E402  (benchmarks/ is the script folder)

REPO = Path(__file__).resolve().parents[1]


def main(
    out: str = "gpu_pretrain_check.json",
    work_dir: str = "",
    data_dir: str = "",
    preset: str = "small",
    crop: int = 96,
    spacing: float = 1.5,
    batch_size: int = 4,
    max_masks: int = 13,
    iters_per_epoch: int = 150,
    max_epochs: int = 4,
    minutes: float = 3.0,
    num_workers: int = 8,
    lr: float = 0.002,
    ladder_minutes: float = 2.0,
    ladder_crop: int = 64,
    ladder_spacing: float = 2.0,
    ladder_batch: int = 4,
    ladder_iters: int = 2000,
    ladder_eval_every: int = 100,
) -> dict:
    """Ladder R1, R2, then R3 (held-out Dice curve and throughput); write ``out`` (JSON) and return it."""
    import tempfile

    import pretrain_experiment as exp

    from scripts import learning_ladder

    shared = REPO.parent / "shared" / "data"
    data = Path(data_dir) if data_dir else (shared if shared.is_dir() else REPO / "data" / "demo")
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="gpu_pretrain_check_"))
    cuda = torch.cuda.is_available()
    t0 = time.time()
    ladder = {}
    for rung in ("R1", "R2") if ladder_minutes > 0 else ():
        t_rung = time.time()
        summary = learning_ladder.main(
            rung=rung,
            out_dir=str(work / "ladder" / rung.lower()),
            preset=preset,
            crop=ladder_crop,
            spacing=ladder_spacing,
            batch=ladder_batch,
            iters=ladder_iters,
            eval_every=ladder_eval_every,
            minutes=ladder_minutes,
            threads=torch.get_num_threads(),
            masks_dir=str(work / "ladder" / "masks"),
            pca_every=0,
        )
        rows = json.loads((work / "ladder" / rung.lower() / "curve.json").read_text())["rows"]
        summary["wall_seconds"] = round(time.time() - t_rung, 1)
        summary["curve"] = [
            {"iteration": r["iteration"], "loss": r["loss"], "real_dice_mean_ema": r["ema"]["real_dice_mean"]}
            for r in rows
        ]
        ladder[rung] = summary
    exp.main(
        source="slic",
        out_dir=str(work),
        data_dir=str(data),
        minutes=minutes,
        preset=preset,
        spacing=spacing,
        crop=crop,
        iters_per_epoch=iters_per_epoch,
        max_epochs=max_epochs,
        batch_size=batch_size,
        max_masks=max_masks,
        lr=lr,
        threads=torch.get_num_threads(),
        num_workers=num_workers if cuda else 0,
        amp=cuda,
    )
    with (work / "curve.csv").open() as f:
        rows = list(csv.DictReader(f))
    timing = json.loads((work / "timing.json").read_text()) if (work / "timing.json").is_file() else {}
    result = {
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU: {cpu_name()}",
        "torch": torch.__version__,
        "precision": "bf16 autocast" if cuda else "fp32",
        "settings": {
            "preset": preset,
            "crop": crop,
            "spacing_mm": spacing,
            "batch_size": batch_size,
            "max_masks": max_masks,
            "iterations_planned": iters_per_epoch * max_epochs,
            "lr": lr,
            "data": str(data),
        },  # fmt: skip
        "ladder": ladder,
        "data_samples_per_s": timing.get("data_samples_per_s"),
        "step_samples_per_s": timing.get("step_samples_per_s"),
        "curve": [
            {"iteration": int(r["iteration"]), "dice_demo5": float(r["dice_demo5"]), "dice_all": float(r["dice_all"])}
            for r in rows
        ],
        "untrained_dice_demo5": float(rows[0]["dice_demo5"]) if rows else None,
        "best_dice_demo5": max((float(r["dice_demo5"]) for r in rows), default=None),
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
        "wall_seconds": round(time.time() - t0, 1),
        "work_dir": str(work),
    }
    Path(out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    import fire

    fire.Fire(main, serialize=lambda _: None)
