"""The mass_maskgen bundle on tiny real volumes: command line, failures, resume after a crash, shards,
MLflow tracking, config properties and metadata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import run

from components.io.maskset import MaskSet
from tests._bundles import bundle_dir, bundle_workflow

BUNDLE = bundle_dir("mass_maskgen")
CONFIG = BUNDLE / "configs" / "inference.json"
SMALL = {"slic_n_segments": [8, 30], "min_voxels": 20, "reference_spacing": [6.0, 6.0, 6.0]}


def _small_volume(src: Path, dst: Path, f: int = 6, crop: tuple | None = None) -> None:
    """Block-average a real volume by ``f`` (keeps orientation; affine scaled)."""
    img = nib.load(str(src))
    x = np.asarray(img.dataobj, dtype=np.float32)
    if crop is not None:
        x = x[crop]
    s = [n // f * f for n in x.shape]
    x = x[: s[0], : s[1], : s[2]].reshape(s[0] // f, f, s[1] // f, f, s[2] // f, f).mean((1, 3, 5))
    aff = img.affine.copy()
    aff[:3, :3] *= f
    nib.save(nib.Nifti1Image(np.rint(x).astype(np.int16), aff), str(dst))


@pytest.fixture(scope="module")
def tiny_dir(shared_data, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny")
    mri = shared_data / "mri"
    _small_volume(mri / "colin27_t1.nii.gz", d / "a_colin.nii.gz")
    _small_volume(mri / "mni152_t1.nii.gz", d / "b_mni.nii.gz")
    _small_volume(mri / "itk_t1.nii.gz", d / "c_itk.nii.gz", f=2)
    return d


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=BUNDLE,  # every stage runs from inside its bundle folder
    )


def _small_args() -> list[str]:
    out = []
    for k, v in SMALL.items():
        out += [f"--{k}", json.dumps(v)]
    return out


def test_broken_volume_among_good_ones_with_mlflow(tiny_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for p in tiny_dir.iterdir():
        (data / p.name).symlink_to(p)
    (data / "z_broken.nii.gz").write_bytes(b"this is not a NIfTI file")
    out = tmp_path / "out"
    r = _cli(
        [
            "run",
            "--config_file",
            "configs/inference.json",
            "--dataset_dir",
            str(data),
            "--output_dir",
            str(out),
            "--tracking",
            "mlflow",
            "--experiment_name",
            "maskgen_test",
            *_small_args(),
        ]
    )
    assert r.returncode != 0, r.stderr[-2000:]
    assert "1 volume(s) failed" in r.stderr and "mask generation" in r.stderr  # summary + progress bar
    fails = json.loads((out / "failures.json").read_text())
    assert len(fails) == 1 and fails[0]["image"].endswith("z_broken.nii.gz")
    assert "z_broken.nii.gz" in fails[0]["reason"] and "cannot be read" in fails[0]["reason"]
    for name in ("a_colin", "b_mni", "c_itk"):
        ms = MaskSet.open(out / f"{name}.mset")
        assert len(ms) >= 10 and ms.provenance[0]["source"] == "slic"
    summ = json.loads((out / "summary.json").read_text())["summary"]
    assert (summ["n_done"], summ["n_failed"]) == (3, 1)
    # per-volume stats and the summary were logged through MLflow's SQLite store
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    exp = client.get_experiment_by_name("maskgen_test")
    run = client.search_runs([exp.experiment_id])[0]
    assert run.data.metrics["summary/n_failed"] == 1.0 and run.data.metrics["summary/n_done"] == 3.0
    assert run.data.metrics["a_colin/n_masks"] == len(MaskSet.open(out / "a_colin.mset"))


_CRASH = """
import json, os, signal, sys
import components.io.maskset as maskset_mod
from monai.bundle import run
n = [0]
fsync = os.fsync
def crash(fd):  # kill -9 while the 2nd volume is being written (after its bytes, before the rename)
    n[0] += 1
    if n[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    fsync(fd)
maskset_mod.os.fsync = crash
run(**json.loads(sys.argv[1]))
"""


def test_resume_after_crash_mid_volume(tiny_dir, tmp_path):
    out = tmp_path / "out"
    kwargs = dict(
        config_file=str(CONFIG), bundle_root=str(BUNDLE), dataset_dir=str(tiny_dir), output_dir=str(out), **SMALL
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    r = subprocess.run(
        [sys.executable, "-c", _CRASH, json.dumps(kwargs)], capture_output=True, text=True, timeout=600, env=env
    )
    assert r.returncode == -9, r.stderr[-2000:]
    first = out / "a_colin.mset"
    assert MaskSet.open(first) and not (out / "b_mni.mset").exists()
    assert list(out.glob(".b_mni.mset.*.tmp")), "the crashed write should leave only a temp file"
    mtime = first.stat().st_mtime_ns
    # a truncated output (e.g. a half-copied file) must be redone too
    (out / "c_itk.mset").write_bytes(first.read_bytes()[:100])
    run(**kwargs)
    vols = {v["case"]: v["status"] for v in json.loads((out / "summary.json").read_text())["volumes"]}
    assert vols == {"a_colin": "skipped", "b_mni": "done", "c_itk": "done"}
    assert first.stat().st_mtime_ns == mtime  # complete output untouched
    assert not list(out.glob(".*.tmp"))
    for name in ("b_mni", "c_itk"):
        MaskSet.open(out / f"{name}.mset").verify()


def test_config_properties_labelmap_source_and_shards(shared_data, tmp_path):
    mri = shared_data / "mri"
    datalist = tmp_path / "datalist.json"
    datalist.write_text(
        json.dumps(
            {
                "all": [
                    {"image": str(mri / "itk_t1.nii.gz"), "label": str(mri / "itk_samseg.nii.gz")},
                    {"image": str(mri / "missing_t1.nii.gz"), "label": str(mri / "itk_samseg.nii.gz")},
                ]
            }
        )
    )
    out = tmp_path / "out"
    wf = bundle_workflow(
        "mass_maskgen",
        "inference.json",
        "infer",
        dataset_dir=str(tmp_path),
        output_dir=str(out),
        source="labelmap",
        shard="1/2",
    )
    wf.initialize()
    assert wf.check_properties() in ([], None)
    # shard 1/2 of the sorted list is the missing file only: it fails cleanly, nothing else is touched
    with pytest.raises(SystemExit, match="1 volume"):
        wf.run()
    fails = json.loads((out / "failures_shard1of2.json").read_text())
    assert len(fails) == 1 and "missing_t1.nii.gz: file does not exist" in fails[0]["reason"]
    wf0 = bundle_workflow(
        "mass_maskgen",
        "inference.json",
        "infer",
        dataset_dir=str(tmp_path),
        output_dir=str(out),
        source="labelmap",
        shard="0/2",
        min_voxels=1,
    )
    wf0.initialize()
    wf0.run()
    res = json.loads((out / "summary_shard0of2.json").read_text())["volumes"]
    assert [v["case"] for v in res] == ["itk_t1"] and res[0]["status"] == "done"
    # label maps as masks: every label is recovered exactly by the quality tool
    assert res[0]["quality"]["share_labels_with_mask_at_threshold"] == 1.0
    assert MaskSet.open(out / "itk_t1.mset").provenance[0]["source"] == "labelmap"


def test_metadata_valid_against_schema(meta_schema):
    import jsonschema

    schema = meta_schema
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    jsonschema.Draft201909Validator(schema).validate(meta)
    assert meta["version"] in meta["changelog"]
    assert (BUNDLE / "LICENSE").read_text() == (BUNDLE.parents[1] / "LICENSE").read_text()
    for f in ("configs/logging.conf", "docs/README.md"):
        assert (BUNDLE / f).is_file()


@pytest.mark.slow
def test_bundle_sam2_tiny_random_weights(shared_data, tmp_path):
    """The SAM2 source through the bundle config (tiny model, random weights, thresholds 0)."""
    ct = tmp_path / "ct"
    ct.mkdir()
    _small_volume(
        shared_data / "ct" / "lung1_ct.nii.gz",
        ct / "lung.nii.gz",
        f=1,
        crop=(slice(128, 384, 2), slice(128, 384, 2), slice(20, 26)),
    )
    out = tmp_path / "out"
    amg = {
        "points_per_side": 4,
        "points_per_batch": 16,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "crop_n_layers": 0,
    }
    r = _cli(
        [
            "run",
            "--config_file",
            "configs/inference.json",
            "--dataset_dir",
            str(ct),
            "--output_dir",
            str(out),
            "--source",
            "sam2",
            "--sam2_config",
            "configs/sam2.1/sam2.1_hiera_t.yaml",
            "--sam2_image_size",
            "128",
            "--amg_params",
            json.dumps(amg),
            "--ct_profile",
            "chest",
            "--min_seed_slices",
            "1",
            "--min_voxels",
            "5",
            "--min_area_px",
            "10",
            "--overlay",
            "true",
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ms = MaskSet.open(out / "lung.mset")
    assert len(ms) >= 1 and all(p["source"] == "sam2" for p in ms.provenance)
    assert (out / "overlays" / "lung.png").stat().st_size > 1000
