"""Parametrised fault injection (issue 14): a bad option or input file gives exit status 2 and one
``error: <option or file>: <problem>`` line, no traceback, and every earlier finished output keeps
its sha256. Each case runs the real bundle config through ``python -m components.run`` in-process."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from components.checks.cli import fire_main
from components.io.maskset import write_maskset
from tests.faults._harness import (
    DEMO,
    finished_outputs,
    not_a_dir,
    pickled_checkpoint,
    run_bundle,
    tree_hashes,
    truncated,
    unchanged,
)


def _datalist(tmp: Path, images=("colin27_t1", "mni152_t1")) -> str:
    p = tmp / "datalist.json"
    p.write_text(json.dumps({"all": [{"image": str(DEMO / f"{n}.nii.gz"), "modality": "MR"} for n in images]}))
    return str(p)


def _pretrain(tmp: Path, fin: Path, **over) -> list[str]:
    opts = {
        "datalist": _datalist(tmp),
        "mask_dir": str(fin / "masks"),
        "output_dir": str(fin / "eval"),
        "ckpt_dir": str(fin / "models"),
        "preset": "tiny",
        "spacing": "[4.0,4.0,4.0]",
        "crop_size": "[32,32,32]",
        "batch_size": "1",
        "num_workers": "0",
        "iters_per_epoch": "1",
        "max_epochs": "1",
        "progress_bar": "False",
        "overwrite": "True",  # fin/models holds a finished model.pt: each case is about its own fault
    }
    opts.update({k: str(v) for k, v in over.items()})
    return [x for k, v in opts.items() for x in (f"--{k}", v)]


def _maskgen(tmp: Path, fin: Path, **over) -> list[str]:
    opts = {"dataset_dir": str(DEMO), "output_dir": str(fin / "masks"), "source": "labelmap"}
    opts.update({k: str(v) for k, v in over.items()})
    return [x for k, v in opts.items() for x in (f"--{k}", v)]


def _sweep(tmp: Path, fin: Path, **over) -> list[str]:
    opts = {"dataset_dir": str(tmp / "ds"), "output_dir": str(fin / "sweep"), "pretrained": "", "report": "False"}
    (tmp / "ds").mkdir(exist_ok=True)
    (tmp / "ds" / "classes.json").write_text(json.dumps([{"name": "a", "label_ids": [1]}]))
    opts.update({k: str(v) for k, v in over.items()})
    return [x for k, v in opts.items() for x in (f"--{k}", v)]


def _ckpt(tmp: Path, kind: str) -> str:
    src = tmp / "fin" / "eval" / "checkpoints" / "checkpoint_epoch=1.pt"
    if kind == "truncated":
        return str(truncated(src, tmp / "broken" / "checkpoint_epoch=2.pt"))
    if kind == "empty":
        p = tmp / "broken" / "empty.pt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
        return str(p)
    if kind == "text":
        p = tmp / "broken" / "notes.pt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("not a checkpoint")
        return str(p)
    if kind == "pickled":
        return str(pickled_checkpoint(tmp / "broken" / "pickled.pt"))
    return str(tmp / "broken" / "missing.pt")


def _other_image_mask(tmp: Path, fin: Path) -> list[str]:
    m = np.zeros((8, 8, 8), bool)
    m[1:4, 1:4, 1:4] = True
    d = tmp / "wrongmasks"
    write_maskset(
        d / "colin27_t1.mset",
        [m],
        np.eye(4),
        image_path="/elsewhere/patientB/colin27_t1.nii.gz",
        extra={"source_sig": {"image": "x", "image_bytes": 1}},
    )
    return _pretrain(tmp, fin, mask_dir=d)


def _csv(tmp: Path, text: str) -> str:
    p = tmp / "probe" / "bad.csv"
    p.write_text(text)
    return str(p)


def _collision(tmp: Path, fin: Path) -> list[str]:
    ds = tmp / "collide"
    for sub in ("patientA", "patientB"):
        (ds / sub).mkdir(parents=True)
        (ds / sub / "t1.nii.gz").write_bytes((DEMO / "colin27_t1.nii.gz").read_bytes())
    (ds / "datalist.json").write_text(
        json.dumps({"all": [{"image": str(ds / s / "t1.nii.gz")} for s in ("patientA", "patientB")]})
    )
    return _maskgen(tmp, fin, dataset_dir=ds)


def _probe(tmp: Path, fin: Path, rows: str | None = None, **over) -> list[str]:
    """The probe's training on a CSV datalist holding ``rows`` (after the header ``image,label,split``)."""
    d = tmp / "probe"
    d.mkdir(exist_ok=True)
    (d / "classes.json").write_text(json.dumps({"classes": ["a", "b"]}))
    csv = d / "datalist.csv"
    img = DEMO / "colin27_t1.nii.gz"
    default = f"{img},a,train\n{img},b,train\n{img},a,val\n{img},b,val\n"
    csv.write_text("image,label,split\n" + (default if rows is None else rows))
    opts = {
        "datalist": str(csv),
        "mode": "scratch",
        "preset": "tiny",
        "output_dir": str(fin / "probe"),
        "spatial_size": "[32,32,32]",
        "spacing": "[6.0,6.0,6.0]",
    }
    opts.update({k: str(v) for k, v in over.items()})
    return [x for k, v in opts.items() for x in (f"--{k}", v)]


def _split(tmp: Path, fin: Path, text: str | None = None, **over) -> list[str]:
    """The sweep on a split file holding ``text`` (default: colin27 to train, mni152 to test)."""
    pair = {
        n: {"image": str(DEMO / f"{n}_t1.nii.gz"), "label": str(DEMO / f"{n}_seg.nii.gz")}
        for n in ("colin27", "mni152")
    }
    p = tmp / "split.json"
    p.write_text(text if text is not None else json.dumps({"train": [pair["colin27"]], "test": [pair["mni152"]]}))
    return _sweep(
        tmp, fin, split_file=p, **{"sweep_shots": "[1]", "sweep_seeds": "[0]", "sweep_modes": "['ic']", **over}
    )


def _bad_support(tmp: Path, fin: Path, data: bytes) -> list[str]:
    """The sweep with a training (support) image that is not a readable volume: refused before any run."""
    bad = tmp / "bad_t1.nii.gz"
    bad.write_bytes(data)
    test = {"image": str(DEMO / "mni152_t1.nii.gz"), "label": str(DEMO / "mni152_seg.nii.gz")}
    text = json.dumps({"train": [{"image": str(bad), "label": str(DEMO / "colin27_seg.nii.gz")}], "test": [test]})
    return _split(tmp, fin, text)


def _overlap(tmp: Path, fin: Path) -> list[str]:
    one = {"image": str(DEMO / "colin27_t1.nii.gz"), "label": str(DEMO / "colin27_seg.nii.gz")}
    return _split(tmp, fin, json.dumps({"train": [one], "test": [one]}))


def _newer_store(tmp: Path) -> str:
    """A real MLflow store whose schema revision this MLflow does not know (written by another version)."""
    import sqlite3

    from components.tracking.store import tracking_client

    p = tmp / "newer" / "mlruns.db"
    p.parent.mkdir()
    tracking_client(f"sqlite:///{p}").create_experiment("mass_fewshot")
    with sqlite3.connect(p) as con:
        con.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    return f"sqlite:///{p}"


def _store(tmp: Path, data: bytes) -> str:
    p = tmp / "store.db"
    p.write_bytes(data)
    return f"sqlite:///{p}"


def _infer(tmp: Path, fin: Path, **over) -> list[str]:
    """The few-shot segmenter (``inference.json``) on the demo folder with ``models/model.pt`` of ``fin``."""
    opts = {"dataset_dir": str(DEMO), "image_pattern": "colin27_t1.nii.gz", "output_dir": str(fin / "infer")}
    opts.update({"ckpt_path": str(fin / "models" / "model.pt"), **{k: str(v) for k, v in over.items()}})
    return [x for k, v in opts.items() for x in (f"--{k}", v)]


def _all_broken(tmp: Path, fin: Path) -> list[str]:
    """A resume whose every checkpoint is broken (a kill while writing, a file emptied)."""
    out = tmp / "brk"
    truncated(fin / "eval" / "checkpoints" / "checkpoint_epoch=1.pt", out / "checkpoints" / "checkpoint_epoch=1.pt")
    (out / "checkpoints" / "checkpoint_epoch=2.pt").write_bytes(b"")
    return _pretrain(tmp, fin, resume=True, output_dir=out, overwrite=False)


def _epochs_done(tmp: Path, fin: Path) -> list[str]:
    """A checkpoint 3 epochs into a run, resumed with --max_epochs 2."""
    p = tmp / "ep3" / "checkpoint_epoch=3.pt"
    p.parent.mkdir(parents=True)
    torch.save({"model": {"w": torch.ones(2)}, "trainer": {"iteration": 3, "epoch_length": 1}}, p)
    return _pretrain(tmp, fin, resume=True, resume_path=p, max_epochs=2)


def _other_preset(tmp: Path, fin: Path) -> list[str]:
    from components.network.nets import build_network

    p = tmp / "small.pt"
    torch.save({"model": build_network("small").state_dict()}, p)
    return _pretrain(tmp, fin, warm_start=p)


def _random_masks(tmp: Path, fin: Path) -> list[str]:
    """Mask sets of random bytes for every volume: each is skipped, then no volume is left."""
    d = tmp / "junk"
    d.mkdir()
    for n in ("colin27_t1", "mni152_t1"):
        (d / f"{n}.mset").write_bytes(np.random.default_rng(0).bytes(4000))
    return _pretrain(tmp, fin, mask_dir=d)


def _masks_of(tmp: Path, fin: Path, kind: str) -> list[str]:
    """Mask sets that pair with the volumes by name but cannot be used: on another grid, or absent."""
    d = tmp / kind
    d.mkdir()
    m = np.zeros((8, 8, 8), bool)
    m[2:5, 2:5, 2:5] = True
    for n in ("colin27_t1", "mni152_t1"):
        name = f"{n}.mset" if kind == "other-grid" else f"unrelated_{n}.mset"
        write_maskset(d / name, [m], np.eye(4), image_path=str(DEMO / f"{n}.nii.gz"))
    return _pretrain(tmp, fin, mask_dir=d)


def _damaged_masks(tmp: Path, fin: Path, kind: str) -> list[str]:
    """Real mask sets of the volumes, then cut in half (a copy interrupted) or with bits flipped in the header."""
    d = tmp / kind
    d.mkdir()
    m = np.zeros((8, 8, 8), bool)
    m[2:5, 2:5, 2:5] = True
    for n in ("colin27_t1", "mni152_t1"):
        p = d / f"{n}.mset"
        write_maskset(p, [m, ~m], np.eye(4), image_path=str(DEMO / f"{n}.nii.gz"))
        data = bytearray(p.read_bytes())
        if kind == "truncated":
            data = data[: len(data) // 2]
        else:
            for i in range(40, 48):
                data[i] ^= 0x10
        p.write_bytes(bytes(data))
    return _pretrain(tmp, fin, mask_dir=d)


def _finished_probe(tmp: Path, fin: Path) -> list[str]:
    (fin / "probe").mkdir(exist_ok=True)
    (fin / "probe" / "summary.json").write_text('{"best_mean_auc": 0.9}')
    torch.save({"w": torch.ones(2)}, fin / "probe" / "head.pt")
    return _probe(tmp, fin, fraction=0.5)


def _rows(*rows: tuple[str, str, str]) -> str:
    return "".join(f"{DEMO / f'{img}.nii.gz'},{label},{split}\n" for img, label, split in rows)


Case = tuple[str, str, str, Callable[[Path, Path], list[str]], int, tuple[str, ...]]
P, M, S = ("mass_pretrain", "train.json"), ("mass_maskgen", "inference.json"), ("mass_fewshot", "sweep.json")
R = ("mass_probe", "train.json")
F = ("mass_fewshot", "inference.json")

CASES: list[Case] = [
    # pretraining hyper-parameters
    ("lr-negative", *P, lambda t, f: _pretrain(t, f, lr=-0.005), 2, ("lr:", "-0.005")),
    ("lr-nan", *P, lambda t, f: _pretrain(t, f, lr="nan"), 2, ("lr:", "nan")),
    ("lr-inf", *P, lambda t, f: _pretrain(t, f, lr="inf"), 2, ("lr:",)),
    ("lr-zero", *P, lambda t, f: _pretrain(t, f, lr=0), 2, ("lr:",)),
    ("lr-text", *P, lambda t, f: _pretrain(t, f, lr="fast"), 2, ("lr:", "fast")),
    ("batch-zero", *P, lambda t, f: _pretrain(t, f, batch_size=0), 2, ("batch_size:",)),
    ("batch-negative", *P, lambda t, f: _pretrain(t, f, batch_size=-2), 2, ("batch_size:",)),
    ("batch-fraction", *P, lambda t, f: _pretrain(t, f, batch_size=1.5), 2, ("batch_size:",)),
    ("iters-zero", *P, lambda t, f: _pretrain(t, f, iters_per_epoch=0), 2, ("iters_per_epoch:",)),
    ("epochs-zero", *P, lambda t, f: _pretrain(t, f, max_epochs=0), 2, ("max_epochs:",)),
    ("preset-unknown", *P, lambda t, f: _pretrain(t, f, preset="huge"), 2, ("preset:", "huge")),
    ("crop-not-16", *P, lambda t, f: _pretrain(t, f, crop_size="[33,32,32]"), 2, ("crop_size:", "tiny")),
    ("crop-too-big", *P, lambda t, f: _pretrain(t, f, crop_size="[128,128,128]"), 2, ("crop_size:", "64")),
    ("crop-2d", *P, lambda t, f: _pretrain(t, f, crop_size="[32,32]"), 2, ("crop_size:",)),
    ("crop-zero", *P, lambda t, f: _pretrain(t, f, crop_size="[0,32,32]"), 2, ("crop_size:",)),
    # pretraining files and folders
    ("datalist-missing", *P, lambda t, f: _pretrain(t, f, datalist=t / "nope.json"), 2, ("datalist:", "nope.json")),
    ("mask-dir-missing", *P, lambda t, f: _pretrain(t, f, mask_dir=t / "nomasks"), 2, ("mask_dir:", "nomasks")),
    ("mask-dir-empty", *P, lambda t, f: _pretrain(t, f, mask_dir=(t / "e").mkdir() or t / "e"), 2, ("mask_dir:",)),
    ("output-unwritable", *P, lambda t, f: _pretrain(t, f, output_dir=not_a_dir(t)), 2, ("output_dir:", "blocker")),
    ("ckpt-dir-unwritable", *P, lambda t, f: _pretrain(t, f, ckpt_dir=not_a_dir(t)), 2, ("ckpt_dir:", "blocker")),
    (
        "resume-truncated",
        *P,
        lambda t, f: _pretrain(t, f, resume=True, resume_path=_ckpt(t, "truncated")),
        2,
        ("checkpoint_epoch=2.pt:", "resume"),
    ),
    (
        "resume-missing",
        *P,
        lambda t, f: _pretrain(t, f, resume=True, resume_path=_ckpt(t, "missing")),
        2,
        ("missing.pt:", "not found"),
    ),
    (
        "resume-empty",
        *P,
        lambda t, f: _pretrain(t, f, resume=True, resume_path=_ckpt(t, "empty")),
        2,
        ("empty.pt:", "empty"),
    ),
    ("init-text", *P, lambda t, f: _pretrain(t, f, init_checkpoint=_ckpt(t, "text")), 2, ("notes.pt:",)),
    (
        "init-pickled",
        *P,
        lambda t, f: _pretrain(t, f, init_checkpoint=_ckpt(t, "pickled")),
        2,
        ("pickled.pt:", "pickled Python objects"),
    ),
    (
        "warm-start-truncated",
        *P,
        lambda t, f: _pretrain(t, f, warm_start=_ckpt(t, "truncated")),
        2,
        ("checkpoint_epoch=2.pt:",),
    ),
    ("masks-of-other-image", *P, _other_image_mask, 2, ("colin27_t1.mset:", "patientB")),
    ("max-masks-zero", *P, lambda t, f: _pretrain(t, f, max_masks=0), 2, ("max_masks:",)),
    ("sampling-unknown", *P, lambda t, f: _pretrain(t, f, sampling="random"), 2, ("sampling:", "random")),
    ("lr-schedule-unknown", *P, lambda t, f: _pretrain(t, f, lr_schedule="cosine2"), 2, ("lr_schedule:", "cosine2")),
    ("aug-magnitude-unknown", *P, lambda t, f: _pretrain(t, f, aug_magnitude="huge"), 2, ("aug_magnitude:", "huge")),
    ("loss-unknown", *P, lambda t, f: _pretrain(t, f, loss_name="tverski"), 2, ("loss_name:", "tverski")),
    ("spacing-absurd", *P, lambda t, f: _pretrain(t, f, spacing="[0.001,0.001,0.001]"), 2, ("spacing:", "0.001")),
    ("spacing-null-text", *P, lambda t, f: _pretrain(t, f, spacing="null"), 2, ("spacing:", "'null'")),
    ("warm-start-other-preset", *P, _other_preset, 2, ("warm_start:", "small.pt", "'small'", "'tiny'")),
    ("no-usable-volume", *P, _random_masks, 2, ("colin27_t1.mset:", "no usable volume")),
    (
        "no-usable-volume-other-grid",
        *P,
        lambda t, f: _masks_of(t, f, "other-grid"),
        2,
        ("colin27_t1.mset:", "does not match", "no usable volume"),
    ),
    (
        "no-usable-volume-truncated-masks",
        *P,
        lambda t, f: _damaged_masks(t, f, "truncated"),
        2,
        ("colin27_t1.mset:", "no usable volume"),
    ),
    (
        "no-usable-volume-bit-flips",
        *P,
        lambda t, f: _damaged_masks(t, f, "bit-flips"),
        2,
        ("colin27_t1.mset:", "no usable volume"),
    ),
    (
        "no-usable-volume-no-mask-set",
        *P,
        lambda t, f: _masks_of(t, f, "absent"),
        2,
        ("colin27_t1.nii.gz:", "no mask-set file", "no usable volume"),
    ),
    # pretraining again over a finished run
    (
        "rerun-over-finished-model",
        *P,
        lambda t, f: _pretrain(t, f, overwrite=False),
        2,
        ("ckpt_dir:", "fin/models", "model.pt", "--resume True", "--overwrite True"),
    ),
    (
        "resume-every-checkpoint-broken",
        *P,
        _all_broken,
        2,
        ("brk/checkpoints:", "checkpoint_epoch=1.pt", "checkpoint_epoch=2.pt", "nothing to resume"),
    ),
    (
        "resume-nothing-but-finished-model",
        *P,
        lambda t, f: _pretrain(t, f, resume=True, output_dir=t / "fresh", overwrite=False),
        2,
        ("resume:", "model.pt"),
    ),
    ("resume-fewer-epochs-than-done", *P, _epochs_done, 2, ("max_epochs:", "2 is below the 3 epochs")),
    # mask generation
    (
        "maskgen-dataset-missing",
        *M,
        lambda t, f: _maskgen(t, f, dataset_dir=t / "nodata"),
        2,
        ("dataset_dir:", "nodata"),
    ),
    (
        "maskgen-dataset-empty",
        *M,
        lambda t, f: _maskgen(t, f, dataset_dir=(t / "e").mkdir() or t / "e"),
        2,
        ("dataset_dir:", "empty"),
    ),
    ("maskgen-shard-range", *M, lambda t, f: _maskgen(t, f, shard="3/2"), 2, ("shard:", "3/2")),
    ("maskgen-shard-text", *M, lambda t, f: _maskgen(t, f, shard="half"), 2, ("shard:", "half")),
    ("maskgen-shard-zero", *M, lambda t, f: _maskgen(t, f, shard="0/0"), 2, ("shard:",)),
    (
        "maskgen-output-unwritable",
        *M,
        lambda t, f: _maskgen(t, f, output_dir=not_a_dir(t)),
        2,
        ("output_dir:", "blocker"),
    ),
    ("sam2-missing", *M, lambda t, f: _maskgen(t, f, sam2_checkpoint=t / "sam2.pt"), 2, ("sam2.pt:", "not found")),
    (
        "sam2-truncated",
        *M,
        lambda t, f: _maskgen(t, f, sam2_checkpoint=_ckpt(t, "truncated")),
        2,
        ("checkpoint_epoch=2.pt:", "SAM2"),
    ),
    ("sam2-pickled", *M, lambda t, f: _maskgen(t, f, sam2_checkpoint=_ckpt(t, "pickled")), 2, ("pickled.pt:", "SAM2")),
    ("sam2-text", *M, lambda t, f: _maskgen(t, f, sam2_checkpoint=_ckpt(t, "text")), 2, ("notes.pt:", "SAM2")),
    ("maskgen-same-stem", *M, _collision, 2, ("patientA/t1.nii.gz", "patientB/t1.nii.gz", "t1.mset")),
    # classification probe: options and CSV datalist faults
    ("probe-lr-negative", *R, lambda t, f: _probe(t, f, learning_rate=-1), 2, ("learning_rate:",)),
    ("probe-batch-zero", *R, lambda t, f: _probe(t, f, batch_size=0), 2, ("batch_size:",)),
    ("probe-csv-missing", *R, lambda t, f: _probe(t, f, datalist=t / "no.csv"), 2, ("datalist:", "no.csv")),
    (
        "probe-encoder-truncated",
        *R,
        lambda t, f: _probe(t, f, mode="frozen", pretrained=_ckpt(t, "truncated")),
        2,
        ("checkpoint_epoch=2.pt:", "encoder"),
    ),
    (
        "probe-csv-no-image-column",
        *R,
        lambda t, f: _probe(t, f) + ["--datalist", _csv(t, "path,label\nx,a\n")],
        2,
        ("bad.csv:", "'image' column"),
    ),
    (
        "probe-csv-image-missing",
        *R,
        lambda t, f: _probe(t, f, rows="/no/such.nii.gz,a,train\n"),
        2,
        ("datalist.csv", "image file not found"),
    ),
    (
        "probe-csv-unknown-label",
        *R,
        lambda t, f: _probe(t, f, rows=f"{DEMO / 'colin27_t1.nii.gz'},zebra,train\n"),
        2,
        ("datalist.csv", "zebra"),
    ),
    (
        "probe-csv-unknown-split",
        *R,
        lambda t, f: _probe(t, f, rows=f"{DEMO / 'colin27_t1.nii.gz'},a,holdout\n"),
        2,
        ("datalist.csv", "holdout"),
    ),
    ("probe-csv-no-rows", *R, lambda t, f: _probe(t, f, rows=""), 2, ("datalist.csv:", "no rows")),
    ("probe-mode-typo", *R, lambda t, f: _probe(t, f, mode="frozn"), 2, ("mode:", "frozn")),
    ("probe-task-unknown", *R, lambda t, f: _probe(t, f, task="regression"), 2, ("task:", "regression")),
    ("probe-fraction-zero", *R, lambda t, f: _probe(t, f, fraction=0), 2, ("fraction:", "0")),
    ("probe-one-class", *R, lambda t, f: _probe(t, f, classes="['a']"), 2, ("classes:", "at least 2")),
    (
        "probe-classes-file-missing",
        *R,
        lambda t, f: _probe(t, f, classes_file=t / "none.json"),
        2,
        ("none.json:", "does not exist"),
    ),
    (
        "probe-rows-of-one-class",
        *R,
        lambda t, f: _probe(t, f, rows=_rows(("colin27_t1", "a", "train"), ("mni152_t1", "a", "val"))),
        2,
        ("datalist:", "validation AUC undefined"),
    ),
    (
        "probe-image-in-train-and-val",
        *R,
        lambda t, f: _probe(
            t, f, rows=_rows(("colin27_t1", "a", "train"), ("mni152_t1", "b", "train"), ("colin27_t1", "a", "val"))
        ),
        2,
        ("datalist.csv, line 4:", "colin27_t1.nii.gz is listed again", "line 2"),
    ),
    ("probe-rerun-over-finished", *R, _finished_probe, 2, ("output_dir:", "summary.json", "--overwrite True")),
    (
        "probe-rerun-over-finished-model",
        *R,
        lambda t, f: _probe(t, f, ckpt_dir=f / "models"),
        2,
        ("ckpt_dir:", "model.pt", "--output_dir", "--overwrite True"),
    ),
    ("maskgen-source-upper", *M, lambda t, f: _maskgen(t, f, source="SLIC"), 2, ("source:", "'SLIC'", "'slic'")),
    ("maskgen-source-unknown", *M, lambda t, f: _maskgen(t, f, source="sam"), 2, ("source:", "'sam'")),
    ("maskgen-sam2-no-weights", *M, lambda t, f: _maskgen(t, f, source="sam2"), 2, ("sam2_checkpoint:",)),
    (
        "maskgen-slic-zero-segments",
        *M,
        lambda t, f: _maskgen(t, f, source="slic", slic_n_segments="[50,0]"),
        2,
        ("slic_n_segments:", "0"),
    ),
    # few-shot segmenter
    (
        "infer-empty-folder",
        *F,
        lambda t, f: _infer(t, f, dataset_dir=t),
        2,
        ("dataset_dir:", "no image"),
    ),
    (
        "infer-other-network",
        *F,
        lambda t, f: _infer(t, f),
        2,
        ("models/model.pt:", "weights of another network than FixedClassNet"),
    ),
    (
        "infer-pickled",
        *F,
        lambda t, f: _infer(t, f, ckpt_path=_ckpt(t, "pickled")),
        2,
        ("pickled.pt:", "pickled Python objects"),
    ),
    # few-shot sweep
    ("sweep-split-overlap", *S, _overlap, 2, ("split.json:", "colin27_t1.nii.gz is in both 'train' and 'test'")),
    ("sweep-split-syntax", *S, lambda t, f: _split(t, f, '{"train": ['), 2, ("split.json:", "not valid JSON")),
    ("sweep-split-empty-test", *S, lambda t, f: _split(t, f, '{"train": [], "test": []}'), 2, ("split.json:",)),
    (
        "sweep-classes-syntax",
        *S,
        lambda t, f: _split(t, f, classes_file=(t / "c.json").write_text("[{") and t / "c.json"),
        2,
        ("c.json:", "not valid JSON"),
    ),
    ("sweep-classes-shape", *S, lambda t, f: _split(t, f, classes="[1, 2]"), 2, ("classes:", "not a class definition")),
    ("sweep-mode-upper", *S, lambda t, f: _split(t, f, sweep_modes="['IC']"), 2, ("sweep_modes:", "'IC'")),
    ("sweep-shots-above-train", *S, lambda t, f: _split(t, f, sweep_shots="[3]"), 2, ("sweep_shots:", "1 training")),
    (
        "sweep-store-corrupt",
        *S,
        lambda t, f: _split(t, f, tracking_uri=_store(t, b"SQLite format 3\x00" + bytes(range(256)) * 8)),
        2,
        ("tracking_uri:", "store.db", "cannot be read"),
    ),
    (
        "sweep-support-not-nifti",
        *S,
        lambda t, f: _bad_support(t, f, b"not a volume"),
        2,
        ("bad_t1.nii.gz:", "cannot be read"),
    ),
    (
        "sweep-support-truncated",
        *S,
        lambda t, f: _bad_support(t, f, (DEMO / "colin27_t1.nii.gz").read_bytes()[:200]),
        2,
        ("bad_t1.nii.gz:", "cannot be read"),
    ),
    (
        "sweep-store-unknown-schema",
        *S,
        lambda t, f: _split(t, f, tracking_uri=_newer_store(t)),
        2,
        ("tracking_uri:", "schema revision ffffffffffff"),
    ),
    ("sweep-split-missing", *S, lambda t, f: _sweep(t, f), 2, ("split_file:", "split.json")),
    ("sweep-output-unwritable", *S, lambda t, f: _sweep(t, f, output_dir=not_a_dir(t)), 2, ("output_dir:", "blocker")),
]


@pytest.mark.parametrize("name,bundle,config,options,code,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_error_line_and_keeps_outputs(
    name, bundle, config, options, code, expected, tmp_path, capsys, monkeypatch
):
    fin = finished_outputs(tmp_path / "fin")
    argv = options(tmp_path, fin)
    before = tree_hashes(fin)  # every finished output there when the command runs, the case's own included
    out = run_bundle(capsys, monkeypatch, bundle, config, *argv)
    assert out.code == code, out.stderr[-3000:]
    assert len(out.errors) == 1, out.stderr[-3000:]
    line = out.errors[0]
    for text in expected:
        assert text in line, line
    assert "Traceback" not in out.stderr and "weights_only=False" not in out.stderr
    assert "Failed to evaluate" not in out.stderr and "Failed to instantiate" not in out.stderr
    assert not unchanged(before, fin)


def _quality(tmp: Path, fin: Path, kind: str) -> list[str]:
    label = str(DEMO / "colin27_seg.nii.gz")
    if kind == "missing-maskset":
        return ["--maskset", str(tmp / "gone.mset"), "--label", label]
    if kind == "edited-header":
        p = tmp / "edited.mset"
        p.write_bytes((fin / "masks" / "done.mset").read_bytes().replace(b'"index":[[0,', b'"index":[[1,', 1))
        return ["--maskset", str(p), "--label", label]
    if kind == "truncated-maskset":
        return ["--maskset", str(truncated(fin / "masks" / "done.mset", tmp / "cut.mset", 0.3)), "--label", label]
    if kind == "missing-label":
        return ["--maskset", str(fin / "masks" / "done.mset"), "--label", str(tmp / "nolabel.nii.gz")]
    done = str(fin / "masks" / "done.mset")
    if kind == "threshold-above-1":
        return ["--maskset", done, "--label", label, "--threshold", "1.5"]
    if kind == "top-zero":
        return ["--maskset", done, "--label", label, "--top", "0"]
    if kind == "label-other-grid":
        return ["--maskset", done, "--label", label]
    if kind == "nothing-to-score":
        return ["--maskset", done]
    return ["--masks_dir", str(fin / "masks"), "--datalist", str(tmp / "nodata")]


QUALITY = [
    ("threshold-above-1", ("threshold:", "1.5")),
    ("top-zero", ("top:",)),
    ("label-other-grid", ("colin27_seg.nii.gz:", "not on the grid of", "done.mset")),
    ("nothing-to-score", ("maskset:", "--label")),
    ("missing-maskset", ("gone.mset:", "not found")),
    ("edited-header", ("edited.mset:", "checksum")),
    ("truncated-maskset", ("cut.mset:", "truncated")),
    ("missing-label", ("nolabel.nii.gz:",)),
    ("missing-datalist", ("nodata:",)),
]


@pytest.mark.parametrize("kind,expected", QUALITY, ids=[q[0] for q in QUALITY])
def test_fire_cli_bad_input_gives_one_error_line(kind, expected, tmp_path, capsys):
    from components.maskgen.quality import main

    fin = finished_outputs(tmp_path / "fin")
    before = tree_hashes(fin)
    argv = _quality(tmp_path, fin, kind)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        fire_main(main, argv, serialize=lambda _: None)
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert stop.value.code == 2, err[-2000:]
    assert len(errors) == 1 and all(t in errors[0] for t in expected), err[-2000:]
    assert "Traceback" not in err
    assert not unchanged(before, fin)


@pytest.mark.parametrize("kind", ["missing", "corrupt", "truncated", "unknown-schema"])
def test_report_cli_on_a_bad_store_gives_one_error_line_and_creates_nothing(kind, tmp_path, capsys):
    from components.fewshot.report import main
    from components.tracking.store import tracking_client

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}" if kind == "missing" else _store(tmp_path, b"x" * 3000)
    if kind == "truncated":  # a real store cut in half (a copy interrupted)
        real = tmp_path / "real" / "mlruns.db"
        real.parent.mkdir()
        tracking_client(f"sqlite:///{real}").create_experiment("mass_fewshot")
        uri = _store(tmp_path, real.read_bytes()[: real.stat().st_size // 2])
    if kind == "unknown-schema":  # a store written by another MLflow version (a schema revision unknown here)
        import sqlite3

        real = tmp_path / "newer" / "mlruns.db"
        real.parent.mkdir()
        tracking_client(f"sqlite:///{real}").create_experiment("mass_fewshot")
        with sqlite3.connect(real) as con:
            con.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
        uri = f"sqlite:///{real}"
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        fire_main(main, ["--tracking_uri", uri, "--out_dir", str(tmp_path / "report")])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert stop.value.code == 2 and len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert (
        errors[0].startswith("error: tracking_uri: ")
        and ("no MLflow store" if kind == "missing" else "cannot be read") in errors[0]
    )
    assert kind != "unknown-schema" or "schema revision ffffffffffff" in errors[0]
    assert not (tmp_path / "mlruns.db").exists()  # a mistyped path no longer creates an empty store there
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("kind", ["shape", "affine"])
def test_support_label_of_another_grid_is_refused_before_any_run(kind, tmp_path, capsys, monkeypatch):
    """A support label on another grid than its image fails every run that draws it: refused, exit 2, named."""
    fin = finished_outputs(tmp_path / "fin")
    label = DEMO / "mni152_seg.nii.gz"
    if kind == "affine":  # the right voxel grid, shifted by 5 mm
        src = nib.load(DEMO / "colin27_seg.nii.gz")
        moved = src.affine.copy()
        moved[:3, 3] += 5.0
        label = tmp_path / "colin27_seg_moved.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(src.dataobj), moved), str(label))
    bad = {"image": str(DEMO / "colin27_t1.nii.gz"), "label": str(label)}
    test = {"image": str(DEMO / "mni152_t1.nii.gz"), "label": str(DEMO / "mni152_seg.nii.gz")}
    argv = _split(tmp_path, fin, json.dumps({"train": [bad], "test": [test]}), report="False")
    before = tree_hashes(fin)
    out = run_bundle(capsys, monkeypatch, "mass_fewshot", "sweep.json", *argv)
    assert out.code == 2 and len(out.errors) == 1, out.stderr[-2000:]
    assert out.errors[0].startswith(f"error: {label}: ") and ("grid" if kind == "shape" else "affine") in out.errors[0]
    assert "object at 0x" not in out.stderr and tree_hashes(fin) == before  # no run started, nothing written


def test_incontext_with_an_existing_task_file_needs_no_split(tmp_path, capsys, monkeypatch, one_thread):
    from components.data.classes import parse_classes
    from components.fewshot.finetune import build_incontext_network
    from components.inference.support import encode_support

    support = [{"image": str(DEMO / "colin27_t1.nii.gz"), "label": str(DEMO / "colin27_seg.nii.gz")}]
    net = build_incontext_network("tiny", "scratch", None, seed=0)
    encode_support(net, support, parse_classes({"wm": [2]}), spacing=(6.0,) * 3, roi_size=(32,) * 3).save(
        tmp_path / "task.pt"
    )
    argv = ["--dataset_dir", str(DEMO), "--image_pattern", "colin27_t1.nii.gz", "--init", "scratch"]
    argv += [
        "--task_file",
        str(tmp_path / "task.pt"),
        "--class_names",
        "['wm']",
        "--split_file",
        str(tmp_path / "no.json"),
    ]
    argv += ["--spacing", "[6.0,6.0,6.0]", "--roi_size", "[32,32,32]", "--output_dir", str(tmp_path / "out")]
    out = run_bundle(capsys, monkeypatch, "mass_fewshot", "incontext.json", *argv)
    assert out.code == 0, out.stderr[-2000:]  # was: error: no.json: split file does not exist
    assert (tmp_path / "out" / "colin27_t1_incontext_seg.nii.gz").is_file()


def test_non_finite_loss_is_one_line_after_no_traceback(tmp_path, capsys, monkeypatch, one_thread):
    from tests.pretrain._util import masksets_from_labels

    masks = masksets_from_labels(tmp_path / "masks", max_ids=4)
    argv = _pretrain(tmp_path, tmp_path / "run", mask_dir=masks, lr=1e12, iters_per_epoch=3, overwrite=False)
    out = run_bundle(capsys, monkeypatch, "mass_pretrain", "train.json", *argv)
    assert out.code == 1 and len(out.errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.errors[0].startswith("error: non-finite loss") and out.stderr.strip().splitlines()[-1] == out.errors[0]


def test_our_errors_skip_the_exception_handlers_that_print_tracebacks():
    import types

    from ignite.engine import Events

    from components.pretrain.trainer import InContextTrainer, NonFiniteLossError

    fired: list = []
    engine = types.SimpleNamespace(_event_handlers={Events.EXCEPTION_RAISED: ["StatsHandler"]})
    engine._fire_event = lambda *a: fired.append(a)  # MONAI's StatsHandler logs the traceback here
    with pytest.raises(NonFiniteLossError):
        InContextTrainer._handle_exception(engine, NonFiniteLossError("non-finite loss"))
    assert fired == []


def test_volume_overflowing_float32_is_named_not_the_loss(tmp_path, capsys, monkeypatch):
    import nibabel as nib

    from tests.pretrain._util import masksets_from_labels

    src = nib.load(DEMO / "colin27_t1.nii.gz")
    data = np.asarray(src.dataobj, dtype=np.float32)
    huge = tmp_path / "data" / "colin27_t1.nii.gz"
    huge.parent.mkdir()
    nib.save(nib.Nifti1Image(data / data.max() * np.float32(3e38), src.affine), huge)
    masks = masksets_from_labels(tmp_path / "masks", names=("colin27",), max_ids=4)
    (tmp_path / "one.json").write_text(json.dumps({"all": [{"image": str(huge), "modality": "MR"}]}))
    argv = _pretrain(tmp_path, tmp_path / "run", mask_dir=masks, datalist=tmp_path / "one.json", overwrite=False)
    out = run_bundle(capsys, monkeypatch, "mass_pretrain", "train.json", *argv)
    assert out.code == 2 and len(out.errors) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.errors[0].startswith(f"error: {huge}: intensities are not finite after normalisation")
