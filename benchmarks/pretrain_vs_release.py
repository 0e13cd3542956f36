"""Pretraining steps per second: the bundle's training step against the authors' release's, side by side.

Same weights, same batch, each side in its own process (as ``vs_release.py``, whose helpers it uses):

* ``release``: the release's own ``Iris`` network, its ``Lamb`` optimiser and its loss (``BinaryDiceLoss``
  + ``BinaryCrossEntropyLoss``, weights 1:1, as its pretraining config), stepped as its trainer's
  ``_train_epoch`` steps: zero grad, forward with ``update_buffer=False``, loss, backward, global gradient
  clip at 1, optimiser step, EMA update of every parameter and buffer (decay 0.999).
* ``ours``: the bundle's ``InContextTrainer`` (MONAI ``SupervisedTrainer``) on the same batch, with the
  release's random initialisation loaded into our network, our ``Lamb``, ``AdaptiveTverskyBCELoss`` and
  Ignite's ``EMAHandler`` as ``mass_pretrain/configs/train.json`` wires them (clip 1, fp32 on CPU).

The first step's loss must agree (relative difference <= 1e-4; the largest difference over all steps is
reported too). Then the median
of ``--reps`` steps after ``--warmup`` steps gives samples/s (batch / step seconds); peak memory as in
``vs_release.py``. The ``tiny`` preset exists only on our side (the release's attention needs >= 32
channels in its three deepest stages), so it is timed for ours alone. CPU: fp32; CUDA: bf16 autocast.

    python benchmarks/pretrain_vs_release.py --release_dir /path/to/MASS --extra_path /tmp/release_pkgs \\
        --out benchmarks/results/pretrain_vs_release_cpu.json
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from vs_release import PRESET_SHAPES, _inputs, _items, _machine, _peak_mb, cli, write_result

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
EMA_DECAY = 0.999


def _batch(size: int, masks: int, batch: int) -> dict[str, torch.Tensor]:
    """``batch`` seeded samples: query, its masks (the copy task: the reference's), reference, its masks."""
    items = [_inputs(size, masks, seed=i) for i in range(batch)]
    ref_masks = torch.cat([d["ref_masks"] for d in items])
    return {
        "query_image": torch.cat([d["query"] for d in items]),
        "query_masks": ref_masks.clone(),
        "ref_image": torch.cat([d["ref_image"] for d in items]),
        "ref_masks": ref_masks,
        "valid": torch.ones(batch, masks, dtype=torch.bool),
    }


def _release_module(rel: str) -> Any:
    """A module of the release by file, without its package ``__init__`` (``training`` imports its trainers and
    with them tensorboard and h5py, which the step does not need)."""
    import importlib.util

    root = next(Path(p) for p in sys.path if (Path(p) / "models" / "iris.py").is_file())
    spec = importlib.util.spec_from_file_location(f"release_{Path(rel).stem}", root / rel)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _release_steps(
    w: Path, preset: str, batch: dict[str, torch.Tensor], steps: int, device: torch.device, cuda: bool
) -> tuple[list[float], list[float]]:
    from metrics.losses import BinaryCrossEntropyLoss, BinaryDiceLoss  # the release's own code
    from models.iris import Iris

    Lamb = _release_module("training/lamb_optimizer.py").Lamb

    torch.manual_seed(0)
    net = Iris(in_ch=1, channels=list(PRESET_SHAPES[preset]), num_block=[2, 2, 2, 2], tn=72)
    torch.save({"model": net.state_dict()}, w / "weights.pt")
    net = net.to(device)
    ema = Iris(in_ch=1, channels=list(PRESET_SHAPES[preset]), num_block=[2, 2, 2, 2], tn=72).to(device)
    ema.load_state_dict(net.state_dict())
    opt = Lamb(net.parameters(), lr=2e-3, betas=(0.9, 0.999), weight_decay=1e-5)
    dice, bce = BinaryDiceLoss(), BinaryCrossEntropyLoss()
    d = {k: v.to(device) for k, v in batch.items()}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    times, losses = [], []
    net.train()
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad()
        with autocast:
            out = net(d["query_image"], d["ref_image"], d["ref_masks"], update_buffer=False)
            loss = dice(out, d["query_masks"]) + bce(out, d["query_masks"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=1.0)
        opt.step()
        with torch.no_grad():
            for p, e in zip(net.parameters(), ema.parameters()):
                e.mul_(EMA_DECAY).add_(p, alpha=1 - EMA_DECAY)
            for b, e in zip(net.buffers(), ema.buffers()):
                if e.dtype.is_floating_point:
                    e.mul_(EMA_DECAY).add_(b, alpha=1 - EMA_DECAY)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    return times, losses


def _our_steps(
    w: Path, preset: str, batch: dict[str, torch.Tensor], steps: int, device: torch.device, cuda: bool
) -> tuple[list[float], list[float]]:
    from ignite.engine import Events
    from ignite.handlers import EMAHandler

    from components.losses.segmentation import AdaptiveTverskyBCELoss
    from components.network.nets import build_network
    from components.network.release_checkpoint import network_from_release_checkpoint
    from components.pretrain.optim.lamb import Lamb
    from components.pretrain.trainer import InContextTrainer

    if (w / "weights.pt").is_file():
        net, _ = network_from_release_checkpoint(w / "weights.pt", prefer_ema=False)
    else:  # tiny: ours only
        torch.manual_seed(0)
        net = build_network(preset)
    net = net.to(device)
    opt = Lamb(net.parameters(), lr=2e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=1e-5)
    trainer = InContextTrainer(
        device=device,
        max_epochs=1,
        epoch_length=steps,
        train_data_loader=[batch] * steps,
        network=net,
        optimizer=opt,
        loss_function=AdaptiveTverskyBCELoss(),
        grad_clip=1.0,
        amp=cuda,
        ema=EMAHandler(net, momentum=1.0 - EMA_DECAY, handle_buffers="update"),
    )
    times: list[float] = []
    losses: list[float] = []
    start: list[float] = []

    def begin(_: Any) -> None:
        if cuda:
            torch.cuda.synchronize()
        start.append(time.perf_counter())

    def end(engine: Any) -> None:
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start[-1])
        out = engine.state.output  # decollated by SupervisedTrainer: one dict per sample
        losses.append(float((out[0] if isinstance(out, list) else out)["loss"]))

    trainer.add_event_handler(Events.ITERATION_STARTED, begin)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, end)  # after the EMA update (attached first)
    trainer.run()
    return times, losses


def worker(
    side: str,
    work: str,
    preset: str,
    size: int,
    masks: int,
    batch: int,
    warmup: int,
    reps: int,
    threads: int,
    release_dir: str = "",
    extra_path: str = "",
) -> None:
    """One side in its own process; writes ``<work>/<side>.json``."""
    torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    w = Path(work)
    data = _batch(size, masks, batch)
    if side == "release":
        sys.path[:0] = [p for p in (release_dir, extra_path) if p]
        times, losses = _release_steps(w, preset, data, warmup + reps, device, cuda)
        (w / "loss.json").write_text(json.dumps(losses))
        rel = 0.0
        rel_steps = 0.0
    else:
        sys.path.insert(0, str(REPO))
        times, losses = _our_steps(w, preset, data, warmup + reps, device, cuda)
        rel = rel_steps = float("nan")
        if (w / "loss.json").is_file():
            ref = json.loads((w / "loss.json").read_text())
            rel = abs(losses[0] - ref[0]) / abs(ref[0])
            if not cuda and rel > TOLERANCE:
                raise SystemExit(f"ours: first-step loss {losses[0]:.6f} differs from the release's {ref[0]:.6f}")
            # later steps follow each side's optimiser: reported, not required to agree
            rel_steps = max(abs(a - b) / abs(b) for a, b in zip(losses, ref))
    step = statistics.median(times[warmup:])
    out = {
        "step_s": step,
        "samples_per_s": batch / step,
        "first_loss": losses[0],
        "first_loss_rel_diff_vs_release": rel,
        "max_step_loss_rel_diff_vs_release": rel_steps,
        "losses": losses,
        "peak_mb": _peak_mb(cuda),
    }
    (w / f"{side}.json").write_text(json.dumps(out))


def main(
    release_dir: str,
    extra_path: str = "",
    presets: str = "tiny,small",
    sizes: str = "48,96",
    masks: int = 3,
    batch: int = 2,
    warmup: int = 1,
    reps: int = 3,
    threads: int = 2,
    out: str = "",
) -> dict[str, Any]:
    """Both sides for every preset x window (ours only for ``tiny``); print the table, write ``out`` (JSON)."""
    if not (Path(release_dir) / "models" / "iris.py").is_file():
        raise SystemExit(f"{release_dir}: not a clone of Stanford-AIMI/MASS (no models/iris.py)")
    from components.network.nets import PRESETS  # the project is installed (editable)

    rows = []
    for preset in _items(presets):
        sides = ("ours",) if preset not in PRESET_SHAPES else ("release", "ours")
        for size in (int(s) for s in _items(sizes)):
            window = PRESETS[preset]["max_window"]
            if size > window:
                print(f"{preset:>5} {size}^3: skipped, the preset's window is at most {window}^3", flush=True)
                continue
            res = {}
            with tempfile.TemporaryDirectory() as work:
                for side in sides:
                    cmd = [sys.executable, __file__, "worker", side, work, preset]
                    cmd += [str(v) for v in (size, masks, batch, warmup, reps, threads)]
                    cmd += ["--release_dir", release_dir, "--extra_path", extra_path]
                    done = subprocess.run(cmd, capture_output=True, text=True)
                    if done.returncode != 0:
                        raise SystemExit(f"{side} {preset} {size}^3 failed:\n{done.stderr[-3000:]}")
                    res[side] = json.loads((Path(work) / f"{side}.json").read_text())
            row: dict[str, Any] = {"preset": preset, "size": size, "masks": masks, "batch": batch, **res}
            o = res["ours"]
            line = f"{preset:>5} {size}^3 batch {batch}: ours {o['samples_per_s']:.3f} samples/s"
            if "release" in res:
                r = res["release"]
                row["ratio_ours_over_release_samples_per_s"] = round(o["samples_per_s"] / r["samples_per_s"], 3)
                row["ratio_release_over_ours_peak_mb"] = round(r["peak_mb"] / o["peak_mb"], 3)
                line += (
                    f", release {r['samples_per_s']:.3f} (x{row['ratio_ours_over_release_samples_per_s']}), "
                    f"peak {r['peak_mb']:.0f}/{o['peak_mb']:.0f} MB, "
                    f"loss rel diff first step {o['first_loss_rel_diff_vs_release']:.1e}, "
                    f"any step {o['max_step_loss_rel_diff_vs_release']:.1e}"
                )
            else:
                line += " (the release cannot build this preset)"
            print(line, flush=True)
            rows.append(row)
    result = {
        "machine": _machine(),
        "settings": {"masks": masks, "batch": batch, "warmup": warmup, "reps": reps, "threads": threads},
        "rows": rows,
    }
    return write_result(out, result)


if __name__ == "__main__":
    cli(main, worker)
