"""Benchmark: memory-efficient vs straightforward task encoding (and a full forward) of MASSNet.

The straightforward path (as released) up-samples every deep feature map to the mask's full
resolution to average it inside the mask, and copies the full-resolution context map once per
mask; the memory-efficient path pools the masks onto the feature grid (same weighted sum) and
shares the image half of the mask-fusion conv. Each mode runs in a fresh subprocess so that its
peak memory (CPU: max RSS growth; GPU: torch.cuda.max_memory_allocated) is its own.

    python benchmarks/bench_task_encoding.py                 # small preset, 64^3, 4 masks, CPU
    python benchmarks/bench_task_encoding.py --preset paper --size 128 --device cuda

The GPU part runs automatically when torch.cuda.is_available().
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from _machine import cpu_name  # noqa: E402  (benchmarks/ is the script folder)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_one(preset: str, size: int, masks: int, device: str, memory_efficient: bool, repeats: int) -> dict:
    """Time encode_task (and one segment) in this process; returns timings and peak memory."""
    from components.network.nets import build_network

    torch.manual_seed(0)
    net = build_network(preset, memory_efficient=memory_efficient).to(device).eval()
    image = torch.randn(1, 1, size, size, size, device=device)
    ref_masks = torch.zeros(1, masks, size, size, size, device=device)
    for i in range(masks):
        lo = size // 8 + i * size // (4 * masks)
        ref_masks[0, i, lo : lo + size // 2, lo : lo + size // 3, lo : lo + size // 2] = 1
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        # warm-up on a half-size grid: loads kernels and thread pools without reaching the peak
        half = [slice(None), slice(None)] + [slice(0, max(16, size // 2))] * 3
        net.encode_task(image[tuple(half)], ref_masks[tuple(half)])
        sync()
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        base = torch.cuda.memory_allocated() if device.startswith("cuda") else 0
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            task = net.encode_task(image, ref_masks)
            sync()
            times.append(time.perf_counter() - t0)
        # peak growth above model + inputs during task encoding
        peak = (
            (torch.cuda.max_memory_allocated() - base) / 2**20
            if device.startswith("cuda")
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
        )
        t0 = time.perf_counter()
        logits = net.segment(image, task)
        sync()
        seg = time.perf_counter() - t0
    return {
        "memory_efficient": memory_efficient,
        "encode_task_s": min(times),
        "segment_s": seg,
        "peak_mib": peak,
        "logits_abs_sum": float(logits.double().abs().sum()),
    }


def compare(preset: str, size: int, masks: int, device: str, repeats: int) -> dict:
    rows = []
    for mode in (False, True):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--preset",
            preset,
            "--size",
            str(size),
            "--masks",
            str(masks),
            "--device",
            device,
            "--repeats",
            str(repeats),
        ] + (["--efficient"] if mode else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    base, lean = rows
    machine = (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"{cpu_name()}, {torch.get_num_threads()} threads"
    )
    return {
        "machine": machine,
        "device": device,
        "preset": preset,
        "size": size,
        "masks": masks,
        "straightforward": base,
        "memory_efficient": lean,
        "speedup_encode": base["encode_task_s"] / lean["encode_task_s"],
        "peak_ratio": lean["peak_mib"] / base["peak_mib"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--masks", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default=None, help="cpu or cuda; default: cpu, then cuda when available")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--efficient", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(run_one(args.preset, args.size, args.masks, args.device, args.efficient, args.repeats)))
        return
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        res = compare(args.preset, args.size, args.masks, device, args.repeats)
        b, m = res["straightforward"], res["memory_efficient"]
        print(f"{res['machine']} | preset={args.preset} size={args.size}^3 masks={args.masks} device={device}")
        print(
            f"  straightforward : encode_task {b['encode_task_s']:.3f} s, extra peak {b['peak_mib']:.0f} MiB, segment {b['segment_s']:.3f} s"
        )
        print(
            f"  memory_efficient: encode_task {m['encode_task_s']:.3f} s, extra peak {m['peak_mib']:.0f} MiB, segment {m['segment_s']:.3f} s"
        )
        print(
            f"  ratio (efficient/straightforward): time {1 / res['speedup_encode']:.2f}x, peak memory {res['peak_ratio']:.2f}x"
        )
        print(json.dumps(res))


if __name__ == "__main__":
    main()
