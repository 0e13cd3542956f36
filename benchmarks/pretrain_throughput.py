"""Pretraining throughput: data pipeline (CPU workers) and training steps, against the release's rate.

The release trained 100 k iterations x 32 samples in about 2 days on 8 H100s: ~2.3 samples/s per GPU
(``RELEASE_SAMPLES_PER_S_PER_GPU``). This script measures, on the machine it runs on:

1. the two-view data pipeline (cached volume -> 13 masks -> two augmented views) in samples/s, with a
   ``DataLoader`` of 0 and N workers, at the paper setting (1.5 mm, 128^3 from 168^3) and a demo setting;
2. training steps (forward + DiceBCE + backward + LAMB + EMA) in samples/s: on CUDA (when present) the
   paper preset at 128^3, 13 masks, batch 4, bf16; on CPU the small preset (fp32) at a CPU-sized window.

Masks come from real label maps (every SAMSEG label of the shared Colin27/MNI152 volumes), written as
mask-set files to a temporary folder. Usage::

    python benchmarks/pretrain_throughput.py [--samples 8] [--workers 2] [--cpu_size 32] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _machine import cpu_name  # noqa: E402  (benchmarks/ is the script folder)
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from torch.utils.data import DataLoader

from components.data.loading import load_volume
from components.io.maskset import write_maskset
from components.losses.segmentation import DiceBCELoss
from components.network.nets import build_network
from components.pretrain.dataset import MaskPretrainDataset
from components.pretrain.optim.lamb import Lamb
from components.pretrain.sampler import TwoViewSampler

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MASS_SHARED_DIR", REPO.parent / "shared")) / "data" / "mri"
RELEASE_SAMPLES_PER_S_PER_GPU = 100_000 * 32 / (2 * 24 * 3600) / 8  # ~2.3


def make_masks(out: Path) -> list[dict]:
    data = []
    for n in ("colin27", "mni152"):
        lab = load_volume(SHARED / f"{n}_samseg.nii.gz")
        a = lab[0].numpy().astype(np.int32)
        ids = [int(i) for i in np.unique(a) if i > 0]
        write_maskset(out / f"{n}_t1.mset", [a == i for i in ids], np.asarray(lab.affine))
        data.append({"image": str(SHARED / f"{n}_t1.nii.gz"), "masks": str(out / f"{n}_t1.mset"), "modality": "MR"})
    return data


def bench_data(
    data: list[dict], cache: Path, spacing: float, crop: int, margin: int, samples: int, workers: int
) -> dict:
    t0 = time.perf_counter()
    ds = MaskPretrainDataset(
        data, cache, spacing=(spacing,) * 3, crop_size=(crop,) * 3, context_margin=margin, max_masks=13
    )
    prep = time.perf_counter() - t0
    out = {"setting": f"{spacing} mm, {crop}^3 from {crop + margin}^3, 13 masks", "prepare_s": round(prep, 2)}
    for w in sorted({0, workers}):
        loader = DataLoader(ds, batch_size=1, sampler=TwoViewSampler(ds, samples + w), num_workers=w)
        it = iter(loader)
        for _ in range(w):  # worker start-up and first sample excluded
            next(it)
        t0 = time.perf_counter()
        n = sum(1 for _ in it)
        out[f"samples_per_s_{w}_workers"] = round(n / (time.perf_counter() - t0), 3)
    return out


def bench_train(preset: str, size: int, masks: int, batch: int, steps: int, device: str, bf16: bool) -> dict:
    torch.manual_seed(0)
    net = build_network(preset).to(device)
    opt, loss_fn = Lamb(net.parameters(), lr=2e-3, weight_decay=1e-5), DiceBCELoss()
    q = torch.randn(batch, 1, size, size, size, device=device)
    r = torch.randn(batch, 1, size, size, size, device=device)
    m = (torch.rand(batch, masks, size, size, size, device=device) > 0.7).float()
    times: list[float] = []

    def train_step(engine: Engine, _: object) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            logits = net(q, r, m)
        loss = loss_fn(logits.float(), m)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    def tic(engine: Engine) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        engine.state.t0 = time.perf_counter()

    def toc(engine: Engine) -> None:
        if device == "cuda":
            torch.cuda.synchronize()
        if engine.state.iteration > 1:  # first step excluded (allocation, autotuning)
            times.append(time.perf_counter() - engine.state.t0)

    engine = Engine(train_step)
    engine.add_event_handler(Events.ITERATION_STARTED, tic)
    EMAHandler(net, momentum=0.01).attach(engine)  # the bundle's EMA (decay 0.99), timed with the step
    engine.add_event_handler(Events.ITERATION_COMPLETED, toc)
    engine.run([None] * (steps + 1), max_epochs=1)
    step = float(np.median(times))
    res = {
        "preset": preset,
        "window": size,
        "masks": masks,
        "batch": batch,
        "bf16": bf16,
        "device": device,
        "step_s": round(step, 3),
        "samples_per_s": round(batch / step, 3),
        "vs_release_per_gpu": round(batch / step / RELEASE_SAMPLES_PER_S_PER_GPU, 3),
    }
    if device == "cuda":
        res["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpu_size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report: dict = {
        "cpu": f"{cpu_name()} ({os.cpu_count()} cores)",
        "threads": args.threads,
        "torch": torch.__version__,
        "release_samples_per_s_per_gpu": round(RELEASE_SAMPLES_PER_S_PER_GPU, 3),
    }
    with tempfile.TemporaryDirectory() as tmp:
        data = make_masks(Path(tmp))
        report["data_paper"] = bench_data(data, Path(tmp) / "cache15", 1.5, 128, 40, args.samples, args.workers)
        report["data_demo"] = bench_data(data, Path(tmp) / "cache3", 3.0, 32, 8, args.samples, args.workers)
    report["train_cpu"] = bench_train("small", args.cpu_size, 13, 1, args.steps, "cpu", False)
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
        report["train_gpu"] = bench_train("paper", 128, 13, 4, max(args.steps, 10), "cuda", True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
