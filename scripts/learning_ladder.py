"""Learning ladder for in-context pretraining: how far has a run come, on this hardware?

Each rung is the ``mass_pretrain`` bundle's own training (``configs/train.json``: network, LAMB,
schedule, EMA, loss, ``InContextTrainer``) with one thing changed, scored every ``--eval_every``
iterations per channel type (the whole-window channel vs the real masks):

* ``R0`` one fixed sample: the same batch every step, both views identical. Scored on that batch;
  reached when every real (non-empty) channel has Dice >= 0.9.
* ``R1`` copy task: random samples of the training volumes, both views identical (same box, no
  augmentation). Scored on samples never trained on; reached at mean real-channel Dice >= 0.5.
* ``R2`` pretext task: the release's sampling and augmentation. Scored on the held-out volume's own
  masks; reached at mean real-channel Dice >= 0.5.

Masks are the label maps of the demo brains (``data/demo``: Colin27 and ITK train, MNI152 held
out), one mask per label id: the upper bound of what a mask source can give.

Output in ``--out_dir``: ``curve.json`` (one row per evaluation, the settings, the iteration and
wall time at which the rung was reached) and ``curve.png``. Resumable: the bundle's own periodic
checkpoints are written every evaluation; run the same command again to continue (``--minutes``
bounds one invocation).

Example::

    .venv/bin/python scripts/learning_ladder.py --rung R1 --preset tiny --optimizer lamb \\
        --out_dir experiments/ladder/r1_tiny_lamb --minutes 120
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from torch.utils.data import default_collate

from components.data.loading import load_volume
from components.io.maskset import write_maskset
from components.maskgen.sources import masks_from_labels
from scripts.feature_pca import picture as pca_picture

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "mass_pretrain"
DEMO = REPO / "data" / "demo"
TRAIN_VOLUMES = ("colin27", "itk")
HELD_OUT = "mni152"
TARGETS = {"R0": ("min", 0.9), "R1": ("mean", 0.5), "R2": ("mean", 0.5)}


def label_masksets(out_dir: Path, names: tuple[str, ...]) -> Path:
    """One ``.mset`` per demo brain, one mask per label id (written once)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for n in names:
        path = out_dir / f"{n}_t1.mset"
        if path.is_file():
            continue
        lab = load_volume(DEMO / f"{n}_seg.nii.gz")
        masks, ids = masks_from_labels(lab[0].numpy().astype(int))
        write_maskset(
            path,
            masks,
            np.asarray(lab.affine),
            provenance=[{"source": "label", "id": i} for i in ids],
            image_path=str(DEMO / f"{n}_t1.nii.gz"),
            shape=lab.shape[1:],
        )
    return out_dir


def channel_scores(logits: torch.Tensor, ref_masks: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> dict:
    """Dice per channel type. logits/ref_masks/target [B, M, ...], valid [B, M] -> summary dict."""
    pred = logits > 0
    tgt = target > 0.5
    inter = (pred & tgt).flatten(2).sum(-1).float()
    size_p, size_t = pred.flatten(2).sum(-1).float(), tgt.flatten(2).sum(-1).float()
    dice = 2 * inter / (size_p + size_t).clamp(min=1)
    whole = ref_masks.flatten(2).float().mean(-1) > 0.95  # the whole-window channel (warped: edges may drop)
    real = valid & ~whole & (size_t > 0)
    empty = valid & ~whole & (size_t == 0)
    d_real = dice[real].numpy()
    return {
        "whole_dice": float(dice[valid & whole].mean()) if bool((valid & whole).any()) else None,
        "real_dice_mean": float(d_real.mean()) if d_real.size else None,
        "real_dice_median": float(np.median(d_real)) if d_real.size else None,
        "real_dice_min": float(d_real.min()) if d_real.size else None,
        "real_predicted_empty": float((size_p[real] == 0).float().mean()) if d_real.size else None,
        "empty_targets_kept_empty": float((size_p[empty] == 0).float().mean()) if bool(empty.any()) else None,
        "real_channels": int(real.sum()),
    }


def overrides(rung: str, out: Path, mask_dir: Path, a: dict[str, Any]) -> dict[str, Any]:
    datalist = out / "datalist.json"
    datalist.write_text(
        json.dumps(
            {"all": [{"image": str(DEMO / f"{n}_t1.nii.gz"), "modality": "MR"} for n in (*TRAIN_VOLUMES, HELD_OUT)]}
        )
    )
    crop = int(a["crop"])
    ov: dict[str, Any] = {
        "bundle_root": str(BUNDLE),
        "datalist": str(datalist),
        "mask_dir": str(mask_dir),
        "output_dir": str(out / "eval"),
        "ckpt_dir": str(out / "models"),
        "preset": a["preset"],
        "spacing": [float(a["spacing"])] * 3,
        "crop_size": [crop] * 3,
        "max_masks": int(a["max_masks"]),
        "min_mask_voxels": int(a["min_mask_voxels"]),
        "batch_size": int(a["batch"]),
        "num_workers": 0,
        "iters_per_epoch": int(a["eval_every"]),
        "max_epochs": max(1, int(a["iters"]) // int(a["eval_every"])),
        "val_names": [f"{HELD_OUT}_t1"],
        "val_label_pairs": [],
        "num_val_samples": 0,
        "progress_bar": False,
        "lr": float(a["lr"]),
        "seed": int(a["seed"]),
        "resume": bool(a["resume"]),
    }
    # the held-out volume's own validation set is scored here instead of by the bundle's evaluator
    ov["train#handlers#5#_disabled_"] = True
    if rung in ("R0", "R1"):
        ov.update({"aug_spatial": False, "aug_appearance": False, "overlap": 1.0, "context_margin": 0})
    else:
        ov["context_margin"] = max(8, round(40 * crop / 128 / 8) * 8)
    if rung == "R0":
        ov["train#sampler"] = f"$list(range({int(a['batch'])})) * {int(a['eval_every'])}"
    if a["optimizer"] == "adamw":
        ov["optimizer"] = {
            "_target_": "torch.optim.AdamW",
            "params": "$@network.parameters()",
            "lr": "@lr",
            "weight_decay": "@weight_decay",
        }
    elif a["optimizer"] != "lamb":
        raise ValueError(f"--optimizer must be lamb or adamw, got {a['optimizer']!r}")
    if a["channels"]:
        ov["network_def#channels"] = list(a["channels"])
    return ov


def eval_batches(rung: str, wf: ConfigWorkflow, n: int, batch: int) -> list[dict]:
    """Fixed evaluation batches: the training batch (R0), unseen training-volume samples (R1), held-out volume (R2)."""
    p = wf.parser
    if rung == "R0":
        ds = p.get_parsed_content("train#dataset")
        return [default_collate([ds[i] for i in range(batch)])]
    ds = p.get_parsed_content("validate#dataset") if rung == "R2" else p.get_parsed_content("train#dataset")
    base = 0 if rung == "R2" else 10**9  # ids the trainer never reaches
    return [default_collate([ds[base + i * batch + j] for j in range(batch)]) for i in range(max(1, n // batch))]


@torch.no_grad()
def score(net: torch.nn.Module, batches: list[dict]) -> dict:
    was = net.training
    net.eval()
    dev = next(net.parameters()).device
    logits, refs, tgts, valids = [], [], [], []
    for b in batches:
        x, ri, rm = (b[k].float().to(dev) for k in ("query_image", "ref_image", "ref_masks"))
        logits.append(net(x, ri, rm).float().cpu())
        refs.append(b["ref_masks"])
        tgts.append(b["query_masks"])
        valids.append(b["valid"])
    net.train(was)
    return channel_scores(torch.cat(logits), torch.cat(refs), torch.cat(tgts), torch.cat(valids))


def plot(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = [r["iteration"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(it, [r["loss"] for r in rows], "k-", label="training loss")
    for key, style in (("whole_dice", "b--"), ("real_dice_mean", "r-o"), ("real_dice_median", "m-")):
        ax.plot(
            it, [r["ema"][key] if r["ema"][key] is not None else np.nan for r in rows], style, ms=3, label=f"EMA {key}"
        )
    ax.plot(it, [r["raw"]["real_dice_mean"] or np.nan for r in rows], "g-", label="raw real_dice_mean")
    ax.set_ylim(0, max(1.05, max(r["loss"] for r in rows) + 0.05))
    ax.set_xlabel("iteration")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(
    rung: str = "R1",
    out_dir: str = "experiments/ladder/run",
    preset: str = "tiny",
    optimizer: str = "lamb",
    lr: float = 0.002,
    crop: int = 48,
    spacing: float = 4.0,
    max_masks: int = 6,
    min_mask_voxels: int = 8,
    batch: int = 2,
    iters: int = 20000,
    eval_every: int = 50,
    eval_samples: int = 8,
    minutes: float = 60.0,
    threads: int = 1,
    seed: int = 0,
    channels: tuple[int, ...] | None = None,
    masks_dir: str | None = None,
    pca_every: int = 500,
) -> dict:
    """Train one rung until it is reached, ``iters`` iterations or ``minutes``; returns the summary.

    ``masks_dir``: where the demo brains' label mask sets are written once (default
    ``experiments/ladder/masks``). Every ``pca_every`` iterations (0: never) the EMA encoder's
    features on the held-out brain are pictured (``scripts/feature_pca.py``) in ``pca/it_NNNNN.png``.
    """
    if rung not in TARGETS:
        raise ValueError(f"--rung must be one of {sorted(TARGETS)}, got {rung!r}")
    torch.set_num_threads(int(threads))
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    curve_file = out / "curve.json"
    state = json.loads(curve_file.read_text()) if curve_file.is_file() else {"rows": [], "reached": None}
    args = dict(locals())
    args["resume"] = bool(list((out / "eval" / "checkpoints").glob("*.pt"))) if (out / "eval").is_dir() else False
    mask_dir = label_masksets(
        Path(masks_dir) if masks_dir else REPO / "experiments" / "ladder" / "masks", (*TRAIN_VOLUMES, HELD_OUT)
    )
    wf = ConfigWorkflow(
        config_file=str(BUNDLE / "configs" / "train.json"),
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        workflow_type="train",
        **overrides(rung, out, mask_dir, args),
    )
    wf.initialize()
    p = wf.parser
    net = p.get_parsed_content("network")
    ema_net = p.get_parsed_content("ema").ema_model
    trainer = p.get_parsed_content("train#trainer")
    batches = eval_batches(rung, wf, eval_samples, batch)
    kind, target = TARGETS[rung]
    settings = {
        k: args[k]
        for k in (
            "rung",
            "preset",
            "optimizer",
            "lr",
            "crop",
            "spacing",
            "max_masks",
            "min_mask_voxels",
            "batch",
            "seed",
        )
    }
    settings["channels"] = list(net.channels)
    state["settings"] = settings
    t_start = time.time()
    seconds_before = state["rows"][-1]["seconds"] if state["rows"] else 0.0
    stop = {"now": False}

    @trainer.on(Events.ITERATION_COMPLETED(every=int(eval_every)))
    def _evaluate(engine: Any) -> None:
        out_ = engine.state.output
        loss = float((out_[0] if isinstance(out_, list) else out_)["loss"])
        row = {
            "iteration": int(engine.state.iteration),
            "seconds": round(seconds_before + time.time() - t_start, 1),
            "loss": loss,
            "lr": float(p.get_parsed_content("optimizer").param_groups[0]["lr"]),
            "raw": score(net, batches),
            "ema": score(ema_net, batches),
        }
        state["rows"].append(row)
        best = max((row[w][f"real_dice_{kind}"] or 0.0) for w in ("raw", "ema"))
        if state["reached"] is None and best >= target:
            state["reached"] = {"iteration": row["iteration"], "seconds": row["seconds"], "dice": best}
        curve_file.write_text(json.dumps(state, indent=1))
        title = (
            f"{rung} {preset} {optimizer} lr {lr} {crop}^3 {spacing} mm, {max_masks} masks, batch {batch}: label masks"
        )
        plot(state["rows"], title, out / "curve.png")
        if pca_every and row["iteration"] % int(pca_every) == 0:
            (out / "pca").mkdir(exist_ok=True)
            pca_picture(
                ema_net,
                str(DEMO / f"{HELD_OUT}_t1.nii.gz"),
                out / "pca" / f"it_{row['iteration']:05d}.png",
                spacing=float(spacing),
                modality="mr",
                title=f"{out.name} EMA, iteration {row['iteration']}",
            )
        print(
            f"it {row['iteration']} {row['seconds']:.0f}s loss {loss:.3f} ema {row['ema']} raw {row['raw']}", flush=True
        )
        if state["reached"] is not None and rung == "R0" or time.time() - t_start > 60 * float(minutes):
            stop["now"] = True

    @trainer.on(Events.STARTED)
    def _trim(engine: Any) -> None:  # rows past the resumed checkpoint are recomputed
        state["rows"] = [r for r in state["rows"] if r["iteration"] <= engine.state.iteration]

    @trainer.on(Events.EPOCH_COMPLETED)
    def _stop(engine: Any) -> None:  # after the epoch's checkpoint, so the next invocation resumes here
        if stop["now"]:
            engine.terminate()

    trainer.run()
    rows = state["rows"]
    summary = {
        "settings": settings,
        "reached": state["reached"],
        "iterations": rows[-1]["iteration"] if rows else 0,
        "hours": round((rows[-1]["seconds"] if rows else 0.0) / 3600, 2),
        "target": f"{kind} real-channel Dice >= {target}",
    }
    state["summary"] = summary
    curve_file.write_text(json.dumps(state, indent=1))
    return summary


if __name__ == "__main__":
    fire.Fire(main)
