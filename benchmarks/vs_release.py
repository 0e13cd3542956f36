"""Our in-context network against the authors' release, side by side: same weights, same input, each in its own process.

For every preset (``small``, ``paper``) and window (96³, 128³) the release side builds its own ``Iris``
network (from a clone of the public ``Stanford-AIMI/MASS`` repository given as ``--release_dir``; its
code is run, never copied), saves its random-initialised state dict, a seeded input (query, reference,
``--masks`` reference masks) and its logits; our side loads that state dict through
``components.network.release_checkpoint`` and must give the same logits (relative L2 <= 1e-4) before
anything is timed. Then each side times, after one warm-up, the median of ``--reps`` runs of:

* ``encode``: the reference's task embedding (release: ``encode_image_feature`` + ``encode_visual_prior``;
  ours: ``encode_task``),
* ``query``: segmenting the query with that embedding (release: ``forward_with_encoded_prior``; ours:
  ``segment``),
* ``full``: the whole forward (query, reference, masks),

and reports its peak memory (CPU: the process's peak resident set; CUDA: ``max_memory_allocated``).
CPU runs fp32; on CUDA (whenever ``torch.cuda.is_available()``) bf16 autocast, as the paper's Table 8.
Ratios are release / ours (above 1: ours is faster or smaller).

    python benchmarks/vs_release.py --release_dir /path/to/MASS --extra_path /tmp/release_pkgs \\
        --out benchmarks/results/vs_release_cpu.json

``--extra_path``: a folder with the release's extra import (``einops``), e.g. ``pip install --target DIR einops``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import fire
import torch

REPO = Path(__file__).resolve().parents[1]
PRESET_SHAPES = {"small": (8, 16, 32, 64, 128), "paper": (32, 64, 128, 256, 512)}
TOLERANCE = 1e-4


def _inputs(size: int, masks: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (1, 1, size, size, size)
    ref_masks = torch.zeros(1, masks, size, size, size)
    for m in range(masks):  # a box per mask, at seeded places
        lo = torch.randint(0, size // 2, (3,), generator=g)
        ext = torch.randint(size // 8, size // 3, (3,), generator=g)
        ref_masks[0, m, lo[0] : lo[0] + ext[0], lo[1] : lo[1] + ext[1], lo[2] : lo[2] + ext[2]] = 1.0
    return {
        "query": torch.randn(shape, generator=g),
        "ref_image": torch.randn(shape, generator=g),
        "ref_masks": ref_masks,
    }


def _timed(fn: Any, reps: int, cuda: bool) -> float:
    """Median seconds of ``reps`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak_mb(cuda: bool) -> float:
    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _op_table(fn: Any, top: int = 12) -> list[dict[str, Any]]:
    """``torch.profiler`` table of one call: the ``top`` ops by self time (ms, calls, share of the total)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiled

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profiled(activities=activities) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [
        {
            "op": e.key,
            "self_ms": round(e.self_cpu_time_total / 1000, 1),
            "calls": e.count,
            "share": round(e.self_cpu_time_total / total, 3),
        }
        for e in rows
    ]


def worker(
    side: str,
    work: str,
    preset: str,
    size: int,
    masks: int,
    reps: int,
    threads: int,
    release_dir: str = "",
    extra_path: str = "",
    profile: bool = False,
) -> None:
    """One side in its own process; writes ``<work>/<side>.json``."""
    torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    w = Path(work)
    if side == "release":
        sys.path[:0] = [p for p in (release_dir, extra_path) if p]
        from models.iris import Iris  # the release's own network

        torch.manual_seed(0)
        net = Iris(in_ch=1, channels=list(PRESET_SHAPES[preset]), num_block=[2, 2, 2, 2], tn=72)
        torch.save({"model": net.state_dict()}, w / "weights.pt")
        data = _inputs(size, masks)
        torch.save(data, w / "inputs.pt")
        net = net.to(device).eval()
        d = {k: v.to(device) for k, v in data.items()}

        def encode():
            return net.encode_visual_prior(net.encode_image_feature(d["ref_image"]), d["ref_masks"])

        def query(prior):
            return net.forward_with_encoded_prior(d["query"], prior)

        def full():
            return net(d["query"], d["ref_image"], d["ref_masks"])

    else:
        sys.path.insert(0, str(REPO))
        from components.network.release_checkpoint import network_from_release_checkpoint

        net, _ = network_from_release_checkpoint(w / "weights.pt", prefer_ema=False)
        net = net.to(device).eval()
        d = {k: v.to(device) for k, v in torch.load(w / "inputs.pt", weights_only=True).items()}

        def encode():
            return net.encode_task(d["ref_image"], d["ref_masks"])

        def query(task):
            return net.segment(d["query"], task)

        def full():
            return net(d["query"], d["ref_image"], d["ref_masks"])

    with torch.inference_mode(), autocast:
        logits = full().float().cpu()
        if side == "release":
            torch.save(logits, w / "logits.pt")
            rel = 0.0
        else:
            ref = torch.load(w / "logits.pt", weights_only=True)
            rel = float(torch.linalg.vector_norm(logits - ref) / torch.linalg.vector_norm(ref))
        if not cuda and rel > TOLERANCE:
            raise SystemExit(f"{side}: logits differ from the release's (relative L2 {rel:.2e} > {TOLERANCE})")
        prior = encode()
        out = {
            "encode_s": _timed(encode, reps, cuda),
            "query_s": _timed(lambda: query(prior), reps, cuda),
            "full_s": _timed(full, reps, cuda),
            "logits_rel_l2_vs_release": rel,
        }
        if profile:
            out["profile"] = {"encode": _op_table(encode), "query": _op_table(lambda: query(prior))}
    out["peak_mb"] = _peak_mb(cuda)
    (w / f"{side}.json").write_text(json.dumps(out))


def _machine() -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import cpu_name

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    info = {
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "commit": commit.strip(),
    }
    info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_result(out: str, result: dict[str, Any]) -> dict[str, Any]:
    """Write a benchmark's result as JSON to ``out`` (if given); return it."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))
    return result


def cli(main: Any, worker: Any) -> None:
    """``python SCRIPT [args]`` runs ``main``; ``python SCRIPT worker ...`` (what ``main`` spawns) one side."""
    fire.Fire(
        {"main": main, "worker": worker} if len(sys.argv) > 1 and sys.argv[1] == "worker" else main,
        serialize=lambda _: None,
    )


def _items(value: Any) -> list[str]:
    """``"a,b"``, ``("a", "b")`` or ``96`` (as the command line parses them) -> ``["a", "b"]``."""
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value).split(",")


def main(
    release_dir: str,
    extra_path: str = "",
    presets: str = "small,paper",
    sizes: str = "96,128",
    masks: int = 3,
    reps: int = 3,
    threads: int = 2,
    out: str = "",
    profile: bool = False,
) -> dict[str, Any]:
    """Run both sides for every preset x window; print the table and write ``out`` (JSON) if given.

    ``profile``: also a ``torch.profiler`` table (top ops by self time) of one encode and one query call per
    side, in the JSON (outside the timed runs)."""
    if not (Path(release_dir) / "models" / "iris.py").is_file():
        raise SystemExit(f"{release_dir}: not a clone of Stanford-AIMI/MASS (no models/iris.py)")
    rows = []
    for preset in _items(presets):
        for size in (int(s) for s in _items(sizes)):
            with tempfile.TemporaryDirectory() as work:
                res = {}
                for side in ("release", "ours"):
                    cmd = [
                        sys.executable,
                        __file__,
                        "worker",
                        side,
                        work,
                        preset,
                        str(size),
                        str(masks),
                        str(reps),
                        str(threads),
                        "--release_dir",
                        release_dir,
                        "--extra_path",
                        extra_path,
                        "--profile",
                        str(bool(profile)),
                    ]
                    done = subprocess.run(cmd, capture_output=True, text=True)
                    if done.returncode != 0:
                        raise SystemExit(f"{side} {preset} {size}^3 failed:\n{done.stderr[-3000:]}")
                    res[side] = json.loads((Path(work) / f"{side}.json").read_text())
            row = {"preset": preset, "size": size, "masks": masks, **{s: res[s] for s in res}}
            row["ratio_release_over_ours"] = {
                k: round(res["release"][k] / res["ours"][k], 3) for k in ("encode_s", "query_s", "full_s", "peak_mb")
            }
            rows.append(row)
            r, o, q = res["release"], res["ours"], row["ratio_release_over_ours"]
            print(
                f"{preset:>5} {size}^3  encode {r['encode_s']:.2f}/{o['encode_s']:.2f} s (x{q['encode_s']})  "
                f"query {r['query_s']:.2f}/{o['query_s']:.2f} s (x{q['query_s']})  "
                f"full {r['full_s']:.2f}/{o['full_s']:.2f} s (x{q['full_s']})  "
                f"peak {r['peak_mb']:.0f}/{o['peak_mb']:.0f} MB (x{q['peak_mb']})  "
                f"logits rel L2 {o['logits_rel_l2_vs_release']:.1e}",
                flush=True,
            )
    result = {
        "machine": _machine(),
        "settings": {
            "masks": masks,
            "reps": reps,
            "threads": threads,
            "dtype": "bf16" if torch.cuda.is_available() else "fp32",
        },
        "rows": rows,
    }
    return write_result(out, result)


if __name__ == "__main__":
    cli(main, worker)
