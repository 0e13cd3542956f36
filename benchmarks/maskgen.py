"""Benchmark: mask generation per volume, by phase (time and peak memory), and batched vs per-object
SAM2 propagation on the same inputs.

Phases: preprocess (load, RAS, intensity mapping, slice plan), encode (SAM2 image encoder on every frame,
once per volume), masks_2d (SAM2AutomaticMaskGenerator on the seed slices, or SLIC), propagation
(SAM2 video predictor, objects batched per seed slice), postprocess (connected components, size,
de-duplication). Peak memory: CPU = max resident set size sampled every 5 ms during the phase (and the
process max RSS); GPU = ``torch.cuda.max_memory_allocated`` of the phase.

SAM2 runs with random weights (no checkpoint can be downloaded here) and thresholds 0 so masks exist;
timings of the network are those of real weights, mask counts are not.

    python benchmarks/maskgen.py                      # CPU part (a few minutes on 2 cores, 1 thread)
    python benchmarks/maskgen.py --out results.json   # also write the numbers as JSON

The GPU part (SAM2 tiny and large at 1024 on the full-resolution chest CT; batched vs per-object at
16 and 64 objects) runs automatically when ``torch.cuda.is_available()``; ``--skip-cpu`` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TQDM_DISABLE", "1")

from _machine import cpu_name  # noqa: E402  (benchmarks/ is the script folder)
from monai.transforms import Compose  # noqa: E402

from components.data.loading import load_transforms  # noqa: E402
from components.maskgen.postprocess import MaskPostprocessd  # noqa: E402
from components.maskgen.sam2.intensity import SAM2Intensityd  # noqa: E402
from components.maskgen.sam2.masks2d import auto_masks_2d, make_mask_generator  # noqa: E402
from components.maskgen.sam2.model import autocast_ctx, build_sam2_predictor  # noqa: E402
from components.maskgen.sam2.propagation import (  # noqa: E402
    FrameAccumulator,
    cache_backbone,
    make_state,
    propagate_batched,
    propagate_per_object,
    volume_frames,
)
from components.maskgen.slices import SeedSlicesd  # noqa: E402
from components.maskgen.sources import SLICMasksd  # noqa: E402

DEMO = ROOT / "data" / "demo"
SHARED = Path(os.environ.get("MASS_SHARED_DIR", ROOT.parent / "shared")) / "data"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


@contextmanager
def phase(rec: dict, name: str, device: torch.device) -> Iterator[None]:
    """Record wall time and peak memory (MB) of the block into ``rec[name]``."""
    peak = {"v": _rss_mb()}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            peak["v"] = max(peak["v"], _rss_mb())

    th = threading.Thread(target=sample, daemon=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    th.start()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        stop.set()
        th.join()
        r = {"s": dt, "peak_rss_mb": peak["v"]}
        if device.type == "cuda":
            r["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 1e6
        rec[name] = r


def load_ct(path: Path, z: slice | None = None, pool: int = 1) -> dict:
    d = Compose(load_transforms(("image",)))({"image": str(path)})
    if z is not None or pool > 1:
        from monai.data import MetaTensor

        x = torch.as_tensor(np.asarray(d["image"]))[..., z or slice(None)]
        aff = np.asarray(d["image"].affine).copy()
        if pool > 1:
            x = torch.nn.functional.avg_pool3d(x[None].float(), (pool, pool, 1))[0]
            aff[:3, :2] *= pool
        d["image"] = MetaTensor(x, affine=torch.as_tensor(aff))
    return d


def bench_slic(path: Path, n_segments: list[int]) -> dict:
    rec: dict[str, Any] = {}
    dev = torch.device("cpu")
    with phase(rec, "preprocess", dev):
        d = Compose(load_transforms(("image",)))({"image": str(path)})
    with phase(rec, "masks_3d", dev):
        d = SLICMasksd(n_segments=n_segments)(d)
    n_raw = len(d["masks"])
    with phase(rec, "postprocess", dev):
        d = MaskPostprocessd()(d)
    total = sum(v["s"] for v in rec.values())
    return {
        "source": "slic",
        "volume": path.name,
        "shape": list(d["image"].shape[1:]),
        "phases": rec,
        "total_s": total,
        "n_raw": n_raw,
        "n_masks": len(d["masks"]),
    }


def bench_sam2(
    d0: dict,
    config: str,
    image_size: int,
    device: torch.device,
    amg: dict,
    max_masks: int,
    objects_per_batch: int,
    max_seeds: int | None,
    name: str,
) -> dict:
    rec: dict[str, Any] = {}
    pred = build_sam2_predictor(config, None, device, image_size=image_size)
    gen = make_mask_generator(pred, amg)
    with phase(rec, "preprocess", device):
        d = SAM2Intensityd("image", modality="CT", profile="chest")(d0)
        d = SeedSlicesd("image", interval_mm=15.0, min_seeds=1)(d)
    plan = d["slice_plan"][0]
    seeds = plan["seeds"][:max_seeds] if max_seeds else plan["seeds"]
    axis = plan["axis"]
    rgb = torch.as_tensor(d["rgb"]).float()
    with phase(rec, "encode", device):
        frames, H, W = volume_frames(rgb, axis, image_size, device)
        state = make_state(pred, frames, H, W)
        cache_backbone(pred, state)
    found: dict[int, list] = {}
    with phase(rec, "masks_2d", device):
        for s in seeds:
            sl = np.take(rgb.numpy(), s, axis=axis + 1).transpose(1, 2, 0)
            sl = np.ascontiguousarray(np.clip(np.rint(sl), 0, 255).astype(np.uint8))
            with autocast_ctx(device, device.type == "cuda"):
                found[s] = auto_masks_2d(gen, sl, 0, max_masks)
    masks, prov = [], []
    with phase(rec, "propagation", device):
        for s, ms in found.items():
            for c in range(0, len(ms), objects_per_batch):
                chunk = ms[c : c + objects_per_batch]
                acc = FrameAccumulator(len(chunk), axis, tuple(rgb.shape[1:]))
                seg = torch.from_numpy(np.stack([m["segmentation"] for m in chunk]))
                with autocast_ctx(device):
                    for f, lg in propagate_batched(pred, state, s, seg):
                        acc.add(f, lg)
                for sp in acc.masks():
                    if sp is not None:
                        masks.append(sp)
                        prov.append({"source": "sam2", "axis": axis, "seed_slice": s})
    d.update(masks=masks, mask_provenance=prov)
    with phase(rec, "postprocess", device):
        d = MaskPostprocessd(min_voxels=10, reference_spacing=plan["spacing"])(d)
    n2d = sum(len(v) for v in found.values())
    return {
        "source": name,
        "shape": list(rgb.shape[1:]),
        "frames": int(frames.shape[0]),
        "seeds": len(seeds),
        "image_size": image_size,
        "phases": rec,
        "total_s": sum(v["s"] for v in rec.values()),
        "n_masks_2d": n2d,
        "n_raw": len(masks),
        "n_masks": len(d["masks"]),
    }


def _seed_objects(d: dict, s: int, n: int) -> torch.Tensor:
    """``n`` real-structure masks on slice ``s``: HU threshold bands split into tiles (deterministic)."""
    hu = np.asarray(d["image"])[0, :, :, s]
    bands = [(-1000, -400), (-400, -50), (-50, 150), (150, 3000)]
    out = []
    H, W = hu.shape
    k = int(np.ceil(np.sqrt(max(1, n // len(bands)))))
    for lo, hi in bands:
        m = (hu > lo) & (hu <= hi)
        for i in range(k):
            for j in range(k):
                t = np.zeros_like(m)
                t[i * H // k : (i + 1) * H // k, j * W // k : (j + 1) * W // k] = True
                if (m & t).sum() > 10:
                    out.append(m & t)
    while len(out) < n:
        out += out
    return torch.from_numpy(np.stack(out[:n]))


def bench_batching(
    d0: dict, config: str, image_size: int, device: torch.device, n_objects: list[int], n_frames: int
) -> list[dict]:
    pred = build_sam2_predictor(config, None, device, image_size=image_size)
    d = SAM2Intensityd("image", modality="CT", profile="chest")(d0)
    rgb = torch.as_tensor(d["rgb"])[..., :n_frames]
    frames, H, W = volume_frames(rgb, 2, image_size, device)
    state = make_state(pred, frames, H, W)
    cache_backbone(pred, state)
    seed = n_frames // 2
    res = []
    for n in n_objects:
        seg = _seed_objects(d, seed, n)
        out: dict[str, Any] = {"objects": n, "frames": n_frames, "image_size": image_size, "config": config}
        logits = {}
        for mode, fn in (("batched", propagate_batched), ("per_object", propagate_per_object)):
            rec: dict[str, Any] = {}
            with phase(rec, mode, device), autocast_ctx(device):
                logits[mode] = {f: (lg > 0).cpu() for f, lg in fn(pred, state, seed, seg)}
            out[mode] = rec[mode]
        a = torch.stack([logits["batched"][f] for f in sorted(logits["batched"])])
        b = torch.stack([logits["per_object"][f] for f in sorted(logits["per_object"])])
        out["agreement"] = float((a == b).float().mean())
        out["exact"] = bool(torch.equal(a, b))
        out["speedup"] = out["per_object"]["s"] / out["batched"]["s"]
        out["per_object_frame_ms_batched"] = 1000 * out["batched"]["s"] / (n * n_frames)
        out["per_object_frame_ms_stock"] = 1000 * out["per_object"]["s"] / (n * n_frames)
        res.append(out)
    return res


def _table(rows: list[dict]) -> str:
    names = ["preprocess", "encode", "masks_3d", "masks_2d", "propagation", "postprocess"]
    lines = [
        "| source | device | volume / frames | " + " | ".join(names) + " | total s | masks (2D -> 3D kept) |",
        "|" + "---|" * (len(names) + 5),
    ]
    for r in rows:
        cells = []
        for n in names:
            p = r["phases"].get(n)
            if p is None:
                cells.append("-")
            else:
                mem = f"{p['peak_gpu_mb']:.0f} MB GPU" if "peak_gpu_mb" in p else f"{p['peak_rss_mb']:.0f} MB RSS"
                cells.append(f"{p['s']:.2f} s / {mem}")
        vol = r.get(
            "volume", f"{r['shape']} x {r.get('frames', '')}f, {r.get('seeds', '')} seeds @{r.get('image_size')}"
        )
        lines.append(
            f"| {r['source']} | {r['device']} | {vol} | "
            + " | ".join(cells)
            + f" | {r['total_s']:.1f} | {r.get('n_masks_2d', '-')} -> {r['n_raw']} -> {r['n_masks']} |"
        )
    return "\n".join(lines)


def _btable(rows: list[dict]) -> str:
    lines = [
        "| device | config @size | objects x frames | batched s | per-object s | speed-up | voxels agree | exact | "
        "ms/object-frame batched / stock | peak mem batched / per-object |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        key = "peak_gpu_mb" if "peak_gpu_mb" in r["batched"] else "peak_rss_mb"
        lines.append(
            f"| {r['device']} | {Path(r['config']).stem} @{r['image_size']} | {r['objects']} x {r['frames']} | "
            f"{r['batched']['s']:.2f} | {r['per_object']['s']:.2f} | {r['speedup']:.2f}x | "
            f"{100 * r['agreement']:.3f}% | {r['exact']} | {r['per_object_frame_ms_batched']:.1f} / "
            f"{r['per_object_frame_ms_stock']:.1f} | {r['batched'][key]:.0f} / {r['per_object'][key]:.0f} MB |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="write all numbers as JSON")
    ap.add_argument("--skip-cpu", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tiny, large = "configs/sam2.1/sam2.1_hiera_t.yaml", "configs/sam2.1/sam2.1_hiera_l.yaml"
    thr0 = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    info = {
        "cpu": cpu_name(),
        "threads": a.threads,
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    rows: list[dict] = []
    brows: list[dict] = []
    cpu = torch.device("cpu")
    if not a.skip_cpu:
        print(f"CPU part on {info['cpu']} ({a.threads} threads)", flush=True)
        for vol in ("colin27_t1.nii.gz", "lung1_ct.nii.gz"):
            rows.append(dict(bench_slic(DEMO / vol, [50, 200, 800]), device="cpu"))
            print(_table(rows[-1:]), flush=True)
        # SAM2 on a CPU is for checking only: tiny model at 128 px, a 4-slice slab, one seed
        slab = load_ct(DEMO / "lung1_ct.nii.gz", z=slice(20, 24))  # 195x147x4 at 1.5x1.5x5 mm
        amg = dict(thr0, points_per_side=4, points_per_batch=16, crop_n_layers=0)
        rows.append(dict(bench_sam2(slab, tiny, 128, cpu, amg, 8, 8, 1, "sam2 tiny"), device="cpu"))
        print(_table(rows[-1:]), flush=True)
        brows += [dict(r, device="cpu") for r in bench_batching(slab, tiny, 128, cpu, [16], 3)]
        print(_btable(brows[-1:]), flush=True)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        print(f"GPU part on {info['gpu']}", flush=True)
        ct = (
            load_ct(SHARED / "ct" / "lung1_ct.nii.gz")
            if (SHARED / "ct").is_dir()
            else load_ct(DEMO / "lung1_ct.nii.gz")
        )
        amg = dict(thr0, points_per_side=32, points_per_batch=128, crop_n_layers=1)
        for cfg, nm in ((tiny, "sam2 tiny"), (large, "sam2 large")):
            rows.append(dict(bench_sam2(ct, cfg, 1024, gpu, amg, 70, 64, 4, nm), device="cuda"))
            print(_table(rows[-1:]), flush=True)
        brows += [dict(r, device="cuda") for r in bench_batching(ct, large, 1024, gpu, [16, 64], 24)]
        print(_btable(brows[-2:]), flush=True)
    print("\n## mask generation by phase (" + f"{info['cpu']}, {a.threads} threads; GPU {info['gpu']})\n")
    print(_table(rows))
    print("\n## batched vs per-object propagation (same model, frames and seed masks)\n")
    print(_btable(brows))
    if a.out:
        Path(a.out).write_text(json.dumps({"machine": info, "phases": rows, "batching": brows}, indent=1))


if __name__ == "__main__":
    main()
