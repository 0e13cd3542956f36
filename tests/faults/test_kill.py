"""kill -9 on real subprocesses, then resume: finished outputs keep their bytes and the resumed run
ends where an uninterrupted one does. Mask generation is the fast representative of the default
suite; pretraining is under ``-m slow``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from components.io.maskset import MaskSet
from tests.faults._harness import DEMO, REPO, tree_hashes

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _cmd(bundle: str, config: str, **options) -> tuple[list[str], Path]:
    argv = [sys.executable, "-m", "components.run", "run", "--config_file", f"configs/{config}"]
    for k, v in options.items():
        argv += [f"--{k}", str(v)]
    return argv, REPO / "bundles" / bundle


def _run(argv, cwd, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def _kill_when(argv, cwd, ready, timeout=300) -> None:
    """Start the command and SIGKILL it as soon as ``ready()`` is true."""
    proc = subprocess.Popen(argv, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail("the run ended before it could be killed")
            if time.time() - t0 > timeout:
                pytest.fail("the kill point was never reached")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _index(p: Path) -> np.ndarray:
    ms = MaskSet.open(p)
    return np.asarray(ms._index[:, 2:10])  # boxes, voxel counts and payload CRCs (not offsets or timings)


def _maskgen(tmp: Path, out: Path):
    ds = tmp / "ds"
    if not ds.exists():
        ds.mkdir()
        items = [
            {"image": str(DEMO / f"{n}_t1.nii.gz"), "label": str(DEMO / f"{n}_seg.nii.gz")}
            for n in ("colin27", "itk", "mni152")
        ]
        (ds / "datalist.json").write_text(json.dumps({"all": items}))
    return _cmd(
        "mass_maskgen",
        "inference.json",
        dataset_dir=ds,
        output_dir=out,
        source="labelmap",
        quality=False,
        min_voxels=50,
    )


def test_maskgen_kill_9_then_resume_keeps_finished_sets_and_completes_exactly(tmp_path):
    out = tmp_path / "masks"
    argv, cwd = _maskgen(tmp_path, out)
    _kill_when(argv, cwd, lambda: any(out.glob("*.mset")))
    finished = tree_hashes(out)
    finished = {k: v for k, v in finished.items() if k.endswith(".mset")}
    assert finished
    resumed = _run(argv, cwd)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = tree_hashes(out)
    assert all(after[k] == v for k, v in finished.items())  # kept byte for byte, not redone
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["n_skipped"] >= len(finished) and summary["n_failed"] == 0
    ref_argv, _ = _maskgen(tmp_path, tmp_path / "ref")
    assert _run(ref_argv, cwd).returncode == 0
    for name in ("colin27_t1.mset", "itk_t1.mset", "mni152_t1.mset"):
        np.testing.assert_array_equal(_index(out / name), _index(tmp_path / "ref" / name))


def _pretrain(tmp: Path, run: str, masks: Path, **extra):
    datalist = tmp / "datalist.json"
    datalist.write_text(
        json.dumps({"all": [{"image": str(DEMO / f"{n}_t1.nii.gz"), "modality": "MR"} for n in ("colin27", "mni152")]})
    )
    opts = dict(
        datalist=datalist,
        mask_dir=masks,
        output_dir=tmp / run / "eval",
        ckpt_dir=tmp / run / "models",
        preset="tiny",
        spacing="[4.0,4.0,4.0]",
        crop_size="[32,32,32]",
        context_margin=8,
        max_masks=4,
        batch_size=1,
        num_workers=0,
        iters_per_epoch=2,
        max_epochs=4,
        num_val_samples=1,
        val_names='["mni152_t1"]',
        progress_bar=False,
    )
    opts.update(extra)
    return _cmd("mass_pretrain", "train.json", **opts)


@pytest.mark.slow
def test_pretrain_kill_9_then_resume_matches_uninterrupted_run_and_keeps_best_model(tmp_path):
    from tests.pretrain._util import masksets_from_labels

    masks = masksets_from_labels(tmp_path / "masks", max_ids=6)
    ref_argv, cwd = _pretrain(tmp_path, "ref", masks)
    ref = _run(ref_argv, cwd)
    assert ref.returncode == 0, ref.stderr[-3000:]

    argv, _ = _pretrain(tmp_path, "killed", masks)
    ckpts = tmp_path / "killed" / "eval" / "checkpoints"
    _kill_when(argv, cwd, lambda: (ckpts / "checkpoint_epoch=2.pt").is_file())
    best = tmp_path / "killed" / "models" / "model.pt"
    resumed_argv, _ = _pretrain(tmp_path, "killed", masks, resume=True)
    resumed = _run(resumed_argv, cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    final = torch.load(ckpts / "checkpoint_epoch=4.pt", weights_only=True)
    expect = torch.load(tmp_path / "ref" / "eval" / "checkpoints" / "checkpoint_epoch=4.pt", weights_only=True)
    for k, v in expect["model"].items():
        torch.testing.assert_close(final["model"][k], v, rtol=1e-4, atol=1e-5)
    assert final["best_metric"]["saved"][0][0] == pytest.approx(expect["best_metric"]["saved"][0][0], abs=1e-4)
    ref_best = torch.load(tmp_path / "ref" / "models" / "model.pt", weights_only=True)
    got_best = torch.load(best, weights_only=True)
    for k, v in ref_best["model"].items():  # the best model is the uninterrupted run's, not the last one
        torch.testing.assert_close(got_best["model"][k], v, rtol=1e-4, atol=1e-5)


def _sweep(tmp: Path, out: Path):
    ds = tmp / "ds"
    if not ds.exists():
        ds.mkdir()
        pair = lambda n: {"image": str(DEMO / f"{n}_t1.nii.gz"), "label": str(DEMO / f"{n}_seg.nii.gz")}  # noqa: E731
        (ds / "split.json").write_text(json.dumps({"train": [pair("colin27"), pair("itk")], "test": [pair("mni152")]}))
        (ds / "classes.json").write_text(json.dumps({"lateral_ventricles": [4, 43], "brain_stem": [16]}))
    return _cmd(
        "mass_fewshot",
        "sweep.json",
        dataset_dir=ds,
        output_dir=out,
        pretrained="",
        report=False,
        spacing="[4.0,4.0,4.0]",
        roi_size="[32,32,32]",
        sweep_shots="[1]",
        sweep_seeds="[0,1,2]",
        sweep_modes='["ic"]',
    )


@pytest.mark.slow
def test_sweep_kill_9_then_rerun_keeps_finished_runs_and_completes_the_rest(tmp_path):
    out = tmp_path / "sweep"
    argv, cwd = _sweep(tmp_path, out)
    first = out / "runs" / "scratch-ic-k1-s0" / "result.json"
    _kill_when(argv, cwd, first.is_file)
    kept = first.read_bytes()
    again = _run(argv, cwd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert first.read_bytes() == kept
    status = json.loads((out / "sweep_status.json").read_text())["runs"]
    assert not status["scratch-ic-k1-s0"].startswith("done")  # not redone
    assert all(status[f"scratch-ic-k1-s{s}"].startswith("done") for s in (1, 2)), status
    ref_argv, _ = _sweep(tmp_path, tmp_path / "ref")
    assert _run(ref_argv, cwd).returncode == 0
    for s in (0, 1, 2):
        got = json.loads((out / "runs" / f"scratch-ic-k1-s{s}" / "result.json").read_text())
        want = json.loads((tmp_path / "ref" / "runs" / f"scratch-ic-k1-s{s}" / "result.json").read_text())
        assert got["dice"] == pytest.approx(want["dice"], abs=1e-6)
