"""In-context inference benchmark: reference encoding, query inference, full forward; time and peak memory.

Compares, in the same run and on the same weights, our memory-efficient task encoder
(``net.memory_efficient = True``, the default) with the straightforward release-style computation
(``net.memory_efficient = False``: trilinear up-sampling of the features to full resolution for the
foreground token, image channel repeated once per mask before the fusion conv).

* GPU (runs whenever ``torch.cuda.is_available()``): paper preset, 128^3, bf16 autocast; peak memory
  from ``torch.cuda.max_memory_allocated``; paper Table 8 (H100) printed beside it.
* CPU: small preset, fp32 and bf16 autocast; peak memory = growth of the process's peak resident
  set (VmHWM, reset through /proc/self/clear_refs) over the resident set before the stage.

Usage::

    python benchmarks/inference.py --out eval/bench_inference.json            # CPU (+ GPU if present)
    python benchmarks/inference.py --skip-cpu --out bench_gpu.json            # GPU part only
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _machine import cpu_name  # noqa: E402  (benchmarks/ is the script folder)

from components.network.nets import build_network  # noqa: E402

PAPER_TABLE8_H100 = {"reference_ms": 39.72, "query_ms": 49.00, "full_ms": 88.84, "peak_gb": 6.3}
STAGES = ("reference", "query", "full")
MODES = {"ours": True, "release-style": False}


# -- machine ---------------------------------------------------------------------------------
def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(device).total_memory / 1e9, 1)
    return info


# -- CPU resident-set accounting -------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_cpu_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back so RSS is a fair baseline
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# -- one measurement -------------------------------------------------------------------------
def run_once(fn: Callable[[], Any], device: torch.device) -> tuple[float, float | None, float]:
    """One call of ``fn``: (wall ms, peak memory GB, process CPU ms) — CUDA: peak allocated (weights
    included); CPU: growth of the peak resident set over the resident set before the call. Process
    CPU time (all threads) is far less sensitive than wall time to other jobs on a shared machine."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        out = fn()
        torch.cuda.synchronize(device)
        ms, cpu_ms = (time.perf_counter() - start) * 1e3, (time.process_time() - cpu_start) * 1e3
        del out
        return ms, torch.cuda.max_memory_allocated(device) / 1e9, cpu_ms
    _release_cpu_memory()
    before = _status_kib("VmRSS")
    peak_ok = _reset_peak_rss()
    start, cpu_start = time.perf_counter(), time.process_time()
    out = fn()
    ms, cpu_ms = (time.perf_counter() - start) * 1e3, (time.process_time() - cpu_start) * 1e3
    peak = _status_kib("VmHWM") if peak_ok else None
    del out
    growth = (peak - before) * 1024 / 1e9 if peak is not None and before is not None else None
    return ms, growth, cpu_ms


def bench_config(
    preset: str, size: int, device: torch.device, bf16: bool, masks: int, warmup: int, repeats: int, seed: int = 0
) -> dict[str, Any]:
    """All stages x both task-encoder modes for one (preset, size, precision) on one device.

    Modes are interleaved (and their order alternated) in every repeat so that a change in machine
    load hits both alike; ``max(warmup, 1)`` full forwards per mode run first.
    """
    torch.manual_seed(seed)
    net = build_network(preset).to(device).eval()
    shape = (1, 1, size, size, size)
    query = torch.randn(shape, device=device)
    ref = torch.randn(shape, device=device)
    ref_masks = torch.zeros((1, masks, size, size, size), device=device)
    for m in range(masks):  # nested boxes, each a different structure
        lo, hi = size // 4 + m, 3 * size // 4 - m
        ref_masks[:, m, lo:hi, lo:hi, lo:hi] = 1.0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def set_mode(name: str) -> None:
        net.memory_efficient = MODES[name]

    results: dict[str, Any] = {
        "preset": preset,
        "size": size,
        "masks": masks,
        "precision": "bf16 autocast" if bf16 else "fp32",
        "device": device.type,
        "warmup_full_forwards": max(warmup, 1),
        "repeats": repeats,
        "parameters": sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers()),
    }
    raw: dict[str, dict[str, list[tuple[float, float | None, float]]]] = {m: {s: [] for s in STAGES} for m in MODES}
    with torch.no_grad(), autocast:
        outputs, tasks = {}, {}
        for name in MODES:
            set_mode(name)
            # the forward kept for the output comparison is the first warm-up forward
            outputs[name] = net(query, ref, ref_masks).float().cpu()
            for _ in range(warmup - 1):
                run_once(lambda: net(query, ref, ref_masks), device)
            tasks[name] = net.encode_task(ref, ref_masks)
        stage_fns: dict[str, Callable[[str], Any]] = {
            "reference": lambda name: net.encode_task(ref, ref_masks),
            "query": lambda name: net.segment(query, tasks[name]),
            "full": lambda name: net(query, ref, ref_masks),
        }
        for stage in STAGES:
            for r in range(repeats):
                for name in list(MODES) if r % 2 == 0 else list(reversed(MODES)):
                    set_mode(name)
                    raw[name][stage].append(run_once(partial(stage_fns[stage], name), device))
        set_mode("ours")
    for name in MODES:
        results[name] = {}
        for stage in STAGES:
            times = [t for t, _, _ in raw[name][stage]]
            peaks = [p for _, p, _ in raw[name][stage] if p is not None]
            cpu = [c for _, _, c in raw[name][stage]]
            results[name][stage] = {
                "ms": statistics.median(times),
                "ms_min": min(times),
                "ms_all": [round(t, 2) for t in times],
                "peak_gb": max(peaks) if peaks else None,
                "cpu_ms": statistics.median(cpu),
            }
        print(
            f"  {preset} {size}^3 {results['precision']} {name}: "
            + ", ".join(f"{s} {results[name][s]['ms']:.1f} ms" for s in STAGES),
            flush=True,
        )
    results["max_abs_logit_diff"] = (outputs["ours"] - outputs["release-style"]).abs().max().item()
    results["ratio_release_over_ours"] = {
        stage: {
            "time": results["release-style"][stage]["ms"] / results["ours"][stage]["ms"],
            "cpu_time": results["release-style"][stage]["cpu_ms"] / results["ours"][stage]["cpu_ms"],
            "memory": _ratio(_peak(results["release-style"][stage]), _peak(results["ours"][stage])),
        }
        for stage in STAGES
    }
    net = None  # free the network before the next configuration
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return results


def _peak(stage: dict[str, Any]) -> float | None:
    return stage.get("peak_gb")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


# -- report ----------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(config: dict[str, Any]) -> str:
    mem_name = "peak GB (allocated)" if config["device"] == "cuda" else "peak RSS growth GB"
    warm = config["warmup_full_forwards"]
    cpu = config["device"] == "cpu"
    extra_head = " ours CPU-time ms | release-style CPU-time ms | CPU-time ratio |" if cpu else ""
    lines = [
        f"#### {config['preset']} preset, {config['size']}^3, {config['masks']} mask(s), {config['precision']}, "
        f"{config['device']} (median of {config['repeats']}, after {warm} warm-up forward(s) per mode)",
        "",
        f"| stage | ours ms | release-style ms | time ratio (release/ours) |{extra_head} ours {mem_name} | "
        f"release-style {mem_name} | memory ratio |",
        "|---|---|---|---|" + ("---|---|---|" if cpu else "") + "---|---|---|",
    ]
    for stage in STAGES:
        ours, rel = config["ours"][stage], config["release-style"][stage]
        ratio = config["ratio_release_over_ours"][stage]
        extra = f" {ours['cpu_ms']:.0f} | {rel['cpu_ms']:.0f} | {ratio['cpu_time']:.2f} |" if cpu else ""
        lines.append(
            f"| {stage} | {ours['ms']:.1f} | {rel['ms']:.1f} | {ratio['time']:.2f} |{extra} {_fmt(_peak(ours), '.3f')} | "
            f"{_fmt(_peak(rel), '.3f')} | {_fmt(ratio['memory'], '.2f')} |"
        )
    lines.append(f"\nmax |logit difference| ours vs release-style: {config['max_abs_logit_diff']:.2e}")
    return "\n".join(lines)


def paper_table() -> str:
    p = PAPER_TABLE8_H100
    return (
        "Paper Table 8 (H100, bf16, 128^3): reference {reference_ms} ms, query {query_ms} ms, "
        "full {full_ms} ms, peak {peak_gb} GB".format(**p)
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--masks", type=int, default=1, help="reference masks (classes) per task")
    parser.add_argument("--cpu-preset", default="small")
    parser.add_argument("--cpu-size", type=int, default=64, help="fp32 CPU volume size")
    parser.add_argument(
        "--cpu-bf16-size",
        type=int,
        default=32,
        help="bf16 CPU volume size (bf16 convs are slow on CPUs without AVX-512 BF16)",
    )
    parser.add_argument("--cpu-warmup", type=int, default=1, help="warm-up full forwards per mode")
    parser.add_argument("--cpu-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--gpu-preset", default="paper")
    parser.add_argument("--gpu-size", type=int, default=128)
    parser.add_argument("--gpu-warmup", type=int, default=5, help="warm-up full forwards per mode")
    parser.add_argument("--gpu-repeats", type=int, default=20)
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-gpu", action="store_true")
    parser.add_argument("--skip-cpu-bf16", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    report: dict[str, Any] = {"benchmark": "in-context inference", "runs": []}
    sections: list[str] = []
    if not args.skip_gpu and torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        report["gpu_machine"] = machine(device)
        print(f"GPU: {report['gpu_machine']['gpu']}", flush=True)
        run = bench_config(args.gpu_preset, args.gpu_size, device, True, args.masks, args.gpu_warmup, args.gpu_repeats)
        report["runs"].append(run)
        report["paper_table8_h100"] = PAPER_TABLE8_H100
        sections.append(f"### GPU: {report['gpu_machine']['gpu']}\n\n{markdown(run)}\n\n{paper_table()}")
    if not args.skip_cpu:
        device = torch.device("cpu")
        report["cpu_machine"] = machine(device)
        print(f"CPU: {report['cpu_machine']['cpu']} ({report['cpu_machine']['cpu_threads']} threads)", flush=True)
        cpu_runs = [(args.cpu_size, False)] + ([] if args.skip_cpu_bf16 else [(args.cpu_bf16_size, True)])
        tables = []
        for size, bf16 in cpu_runs:
            run = bench_config(args.cpu_preset, size, device, bf16, args.masks, args.cpu_warmup, args.cpu_repeats)
            report["runs"].append(run)
            tables.append(markdown(run))
        m = report["cpu_machine"]
        sections.append(
            f"### CPU: {m['cpu']}, {m['cpu_threads']} threads, load average "
            f"{m.get('load_average_1min', 'n/a')}\n\n" + "\n\n".join(tables)
        )
    text = "\n\n".join(sections) if sections else "nothing to run (no GPU and --skip-cpu)"
    print("\n" + text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(args.out)
        print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
