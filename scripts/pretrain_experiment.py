"""Pretraining learning curve on real volumes: does the mass_pretrain bundle learn in-context segmentation?

Trains the ``mass_pretrain`` bundle (its own ``configs/train.json``, release objective and sampling by
default) on the real volumes of a data folder laid out like ``../shared/data`` and, after every epoch,
measures held-out in-context Dice: MNI152's SAMSEG structures segmented from Colin27 references
(MNI152 is never trained on). Classes: the five few-shot demo classes plus every structure of at
least 1 cm^3 in both brains. Each evaluation encodes the Colin27 references with the EMA weights
(``components.inference.support.encode_support``) and segments the whole MNI152 volume with sliding windows
(``components.inference.evaluate.evaluate``), exactly as the few-shot IC mode does.

Mask sources: ``labels`` (the SAMSEG label maps of the training brains, through the maskgen bundle's
``labelmap`` source: the upper bound) or ``slic`` (SLIC supervoxels of every training volume, MRI and CT,
through the maskgen bundle: the self-supervised case).

Unattended and resumable: checkpoints every epoch (the bundle's own), ``curve.csv`` gains one row per
epoch, ``curve.png`` is redrawn; run the same command again after an interruption and it resumes from
the newest checkpoint (``--minutes`` bounds the wall time of one invocation; the next one continues).

Example::

    nohup .venv/bin/python scripts/pretrain_experiment.py --source labels --out_dir experiments/pretrain_labels \\
        --minutes 60 > experiments/pretrain_labels.log 2>&1 &
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
DEMO_CLASSES = {
    "lateral_ventricles": [4, 43],
    "thalamus": [10, 49],
    "cerebellum_cortex": [8, 47],
    "brain_stem": [16],
    "putamen": [12, 51],
}


def layout(data_dir: Path) -> dict[str, Path]:
    """File paths in ``../shared/data`` (``mri/``, ``ct/``, 1 mm) or in the repository's ``data/demo`` (flat, 2 mm)."""
    if (data_dir / "mri").is_dir():
        mri, ct = data_dir / "mri", data_dir / "ct"
        return {
            "colin27": mri / "colin27_t1.nii.gz", "colin27_label": mri / "colin27_samseg.nii.gz",
            "itk": mri / "itk_t1.nii.gz", "itk_label": mri / "itk_samseg.nii.gz",
            "mni152": mri / "mni152_t1.nii.gz", "mni152_label": mri / "mni152_samseg.nii.gz",
            "head_ct": ct / "head_ct.nii.gz", "lung_ct": ct / "lung1_ct.nii.gz",
            "names": data_dir / "labels_samseg.json",
        }  # fmt: skip
    return {
        "colin27": data_dir / "colin27_t1.nii.gz", "colin27_label": data_dir / "colin27_seg.nii.gz",
        "itk": data_dir / "itk_t1.nii.gz", "itk_label": data_dir / "itk_seg.nii.gz",
        "mni152": data_dir / "mni152_t1.nii.gz", "mni152_label": data_dir / "mni152_seg.nii.gz",
        "head_ct": data_dir / "head_ct.nii.gz", "lung_ct": data_dir / "lung1_ct.nii.gz",
        "names": data_dir / "labels.json",
    }  # fmt: skip


def training_items(data_dir: Path, source: str) -> list[dict[str, Any]]:
    """Training volumes (MNI152 held out): the labelled brains; with SLIC also the CTs."""
    f = layout(data_dir)
    items: list[dict[str, Any]] = [
        {"image": str(f["colin27"]), "label": str(f["colin27_label"]), "modality": "MR"},
        {"image": str(f["itk"]), "label": str(f["itk_label"]), "modality": "MR"},
    ]
    if source == "slic":
        items += [{"image": str(f["head_ct"]), "modality": "CT"}, {"image": str(f["lung_ct"]), "modality": "CT"}]
    for it in items:
        for key in ("image", "label"):
            if key in it and not Path(it[key]).is_file():
                raise FileNotFoundError(f"{it[key]}: training volume missing (data_dir={data_dir})")
    return items


def eval_classes(ref_label: Path, query_label: Path, names_file: Path, min_cm3: float = 1.0) -> dict[str, list[int]]:
    """The five demo classes, then every SAMSEG id with >= ``min_cm3`` in both label maps."""
    import nibabel as nib

    names = json.loads(names_file.read_text()) if names_file.is_file() else {}
    volumes = []
    for path in (ref_label, query_label):
        img = nib.load(str(path))
        lab = np.asarray(img.dataobj).astype(np.int32)
        vox_cm3 = abs(float(np.linalg.det(img.affine[:3, :3]))) / 1000.0
        ids, counts = np.unique(lab[lab > 0], return_counts=True)
        volumes.append({int(i): float(c) * vox_cm3 for i, c in zip(ids, counts)})
    classes = {k: list(v) for k, v in DEMO_CLASSES.items()}
    for i in sorted(set(volumes[0]) & set(volumes[1])):
        if min(volumes[0][i], volumes[1][i]) >= min_cm3:
            classes[f"{i}_{names.get(str(i), 'id')}"] = [i]
    return classes


def make_masks(items: list[dict[str, Any]], source: str, out_dir: Path) -> Path:
    """One mask set per training volume, written by the maskgen bundle (resumes finished volumes)."""
    from monai.bundle import ConfigWorkflow

    mask_dir = out_dir / "masks"
    datalist = out_dir / "train_datalist.json"
    datalist.write_text(json.dumps({"all": items}, indent=1))
    bundle = BUNDLES / "mass_maskgen"
    overrides: dict[str, Any] = {
        "bundle_root": str(bundle),
        "dataset_dir": str(out_dir),
        "datalist_file": str(datalist),
    }
    overrides["output_dir"] = str(mask_dir)
    if source == "labels":
        overrides["source"] = "labelmap"
    wf = ConfigWorkflow(
        config_file=str(bundle / "configs" / "inference.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type="infer",
        **overrides,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return mask_dir


class CurveRecorder:
    """After every epoch: held-out IC Dice of the EMA weights -> ``curve.csv`` row and ``curve.png``."""

    def __init__(
        self,
        out_dir: Path,
        data_dir: Path,
        classes: dict[str, list[int]],
        ema: Any,
        preset: str,
        spacing: list[float],
        roi_size: list[int],
        elapsed_before: float,
    ) -> None:
        from components.data.classes import parse_classes

        self.out_dir, self.ema, self.preset = out_dir, ema, preset
        self.classes = parse_classes(classes)
        self.spacing, self.roi_size = spacing, roi_size
        f = layout(data_dir)
        self.support = [{"image": str(f["colin27"]), "label": str(f["colin27_label"])}]
        self.test = [{"image": str(f["mni152"]), "label": str(f["mni152_label"])}]
        self.csv = out_dir / "curve.csv"
        self.start, self.elapsed_before = time.time(), elapsed_before
        self.losses: list[float] = []
        self.timing = {"samples": 0, "data_seconds": 0.0, "step_seconds": 0.0}
        self._t = 0.0

    def evaluate(self, weights: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        """Held-out in-context Dice with the largest-component step (as released) and without it."""
        from components.inference.evaluate import evaluate
        from components.inference.incontext import segment_in_chunks
        from components.inference.support import encode_support
        from components.network.nets import build_network

        net = build_network(self.preset)
        net.load_state_dict(weights.state_dict())
        net.eval()
        common = dict(spacing=self.spacing, roi_size=self.roi_size, modality="mr")
        with torch.no_grad():
            task = encode_support(net, self.support, self.classes, **common)
            predictor = lambda x: segment_in_chunks(net.segment, x, task)  # noqa: E731
            return (
                evaluate(predictor, self.test, self.classes, **common),
                evaluate(predictor, self.test, self.classes, **common, largest_component=False),
            )

    def record(self, iteration: int, weights: torch.nn.Module) -> None:
        result, no_lcc = self.evaluate(weights)
        dice, dice_no_lcc = result["dice"], no_lcc["dice"]
        demo = [dice[k] for k in DEMO_CLASSES]
        row = {
            "iteration": iteration,
            "minutes": round((self.elapsed_before + time.time() - self.start) / 60.0, 2),
            "train_loss": round(float(np.mean(self.losses)), 5) if self.losses else "",
            "dice_demo5": round(float(np.nanmean(demo)), 5),
            "dice_all": round(float(np.nanmean(list(dice.values()))), 5),
            "dice_demo5_no_lcc": round(float(np.nanmean([dice_no_lcc[k] for k in DEMO_CLASSES])), 5),
            "dice_all_no_lcc": round(float(np.nanmean(list(dice_no_lcc.values()))), 5),
            **{f"dice_{k}": round(v, 5) for k, v in dice.items()},
            **{f"dice_no_lcc_{k}": round(v, 5) for k, v in dice_no_lcc.items()},
        }
        self.losses.clear()
        rows: list[dict[str, Any]] = [*read_curve(self.csv), row]  # a curve of an older column set is widened
        fields = list(dict.fromkeys(k for r in rows for k in r))
        tmp = self.csv.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, restval="")
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.csv)
        print(
            f"[curve] it {iteration}: demo5 {row['dice_demo5']:.4f} (no LCC {row['dice_demo5_no_lcc']:.4f}) "
            f"all {row['dice_all']:.4f} (no LCC {row['dice_all_no_lcc']:.4f}) loss {row['train_loss']}",
            flush=True,
        )
        plot_curve(self.csv, self.out_dir / "curve.png")
        t = self.timing
        if t["samples"]:
            t["data_samples_per_s"] = t["samples"] / max(t["data_seconds"], 1e-9)
            t["step_samples_per_s"] = t["samples"] / max(t["step_seconds"], 1e-9)
        (self.out_dir / "timing.json").write_text(json.dumps(t, indent=1))

    def attach(self, trainer: Any) -> None:
        from ignite.engine import Events
        from monai.handlers import from_engine

        loss_of = from_engine(["loss"], first=True)  # the output is decollated per sample by then
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: self.losses.append(float(loss_of(e.state.output)))
        )
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: self.record(e.state.iteration, self.ema.ema_model))

        def clock(e: Any, key: str | None) -> None:  # data loading vs training step, per iteration
            now = time.perf_counter()
            if key is not None:
                self.timing[key] += now - self._t
            if key == "step_seconds":
                batch = e.state.batch  # decollated into a list of samples by now
                self.timing["samples"] += len(batch) if isinstance(batch, list) else int(batch["query_image"].shape[0])
            self._t = now

        trainer.add_event_handler(Events.GET_BATCH_STARTED, clock, None)
        trainer.add_event_handler(Events.GET_BATCH_COMPLETED, clock, "data_seconds")
        trainer.add_event_handler(Events.ITERATION_COMPLETED, clock, "step_seconds")


def read_curve(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def plot_curve(csv_path: Path, png_path: Path) -> None:
    """Held-out Dice in % (5 demo classes, all classes; the few-shot report's unit) and training loss
    against iterations; the title names the mask source, preset, grid and held-out volume
    (``settings.json`` beside the CSV), the legend every line, the loss included."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_curve(csv_path)
    it = [int(r["iteration"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(it, [100 * float(r["dice_demo5"]) for r in rows], "o-", label="held-out Dice, 5 demo classes")
    ax.plot(it, [100 * float(r["dice_all"]) for r in rows], "s--", label="held-out Dice, all classes >= 1 cm3")
    no_lcc = [(i, 100 * float(r["dice_all_no_lcc"])) for i, r in zip(it, rows) if r.get("dice_all_no_lcc")]
    if no_lcc:
        ax.plot(*zip(*no_lcc), "^:", label="same, without the largest-component step")
    ax.set_xlabel("iteration")
    ax.set_ylabel("in-context Dice (%), class mean")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    loss = [(i, float(r["train_loss"])) for i, r in zip(it, rows) if r["train_loss"]]
    if loss:
        ax2.plot(*zip(*loss), color="grey", alpha=0.5, label="training loss (right axis)")
        ax2.set_ylabel("training loss")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
    ax.set_title(_curve_title(csv_path.parent), fontsize=9)
    fig.tight_layout()
    tmp = png_path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)


def _curve_title(out_dir: Path) -> str:
    """``<source> masks, preset, spacing, crop; held-out volume and references`` from ``settings.json``."""
    try:
        s = json.loads((out_dir / "settings.json").read_text())
    except (OSError, ValueError):
        s = {}
    spacing = s.get("spacing") or ["?"]
    crop = s.get("crop_size") or ["?"]
    return (
        f"{out_dir.name}: {s.get('source', '?')} masks, preset {s.get('preset', '?')}, "
        f"{spacing[0]} mm, {crop[0]}^3 crops\nheld out: MNI152 T1, segmented in context from Colin27"
    )


def main(
    source: str = "labels",
    out_dir: str = "experiments/pretrain_labels",
    data_dir: str = str(REPO.parent / "shared" / "data"),
    minutes: float = 60.0,
    preset: str = "tiny",
    spacing: float = 4.0,
    crop: int = 48,
    iters_per_epoch: int = 100,
    max_epochs: int = 30,
    batch_size: int = 2,
    max_masks: int = 6,
    lr: float = 0.002,
    threads: int = 1,
    **overrides: Any,
) -> None:
    """Run (or resume) one curve; extra ``--key value`` pairs override ``mass_pretrain`` config ids."""
    from monai.bundle import ConfigWorkflow

    if source not in ("labels", "slic"):
        raise SystemExit(f"error: --source: must be 'labels' or 'slic', got {source!r}")
    torch.set_num_threads(int(threads))
    out, data = Path(out_dir).resolve(), Path(data_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    items = training_items(data, source)
    mask_dir = make_masks(items, source, out)
    f = layout(data)
    classes = eval_classes(f["colin27_label"], f["mni152_label"], f["names"])
    (out / "classes.json").write_text(json.dumps(classes, indent=1))
    rows = read_curve(out / "curve.csv")
    ckpt_dir = out / "eval" / "checkpoints"
    resume = any(ckpt_dir.glob("*.pt"))
    bundle = BUNDLES / "mass_pretrain"
    settings = {
        "bundle_root": str(bundle),
        "datalist": str(out / "train_datalist.json"),
        "mask_dir": str(mask_dir),
        "output_dir": str(out / "eval"),
        "ckpt_dir": str(out / "models"),
        "val_names": [],
        "val_label_pairs": [],
        "preset": preset,
        "spacing": [spacing] * 3,
        "crop_size": [crop] * 3,
        "context_margin": max(8, crop // 4),
        "max_masks": max_masks,
        "batch_size": batch_size,
        "num_workers": 0,
        "iters_per_epoch": iters_per_epoch,
        "max_epochs": max_epochs,
        "lr": lr,
        "progress_bar": False,
        "resume": resume,
        **overrides,
    }
    (out / "settings.json").write_text(
        json.dumps({"source": source, "data_dir": str(data), **settings}, indent=1, default=str)
    )
    wf = ConfigWorkflow(
        config_file=str(bundle / "configs" / "train.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type="train",
        **settings,
    )
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    elapsed_before = 60.0 * float(rows[-1]["minutes"]) if rows else 0.0
    rec = CurveRecorder(
        out, data, classes, wf.parser.get_parsed_content("ema"), preset, [spacing] * 3, [crop] * 3, elapsed_before
    )
    if not rows:
        rec.record(0, wf.parser.get_parsed_content("network"))  # the untrained network (= EMA at start)
    rec.attach(trainer)
    deadline = time.time() + 60.0 * float(minutes)

    from ignite.engine import Events

    def _stop_when_due(engine: Any) -> None:
        if time.time() >= deadline:
            print(
                f"[curve] time budget of {minutes} min reached at iteration {engine.state.iteration}; "
                "run the same command again to continue",
                flush=True,
            )
            engine.terminate()

    trainer.add_event_handler(Events.EPOCH_COMPLETED, _stop_when_due)
    wf.run()
    wf.finalize()


if __name__ == "__main__":
    import fire

    sys.exit(fire.Fire(main))
