"""A real MONAI Label 0.8.5 server (apps/monailabel, .venv-serve) on 127.0.0.1, driven over HTTP.

One server for the module: /info, /infer of the fixed-class bundle (compared voxel for voxel with
``monai.bundle run``), "label one, segment all" in context after one label is saved (compared with
``monai.bundle run`` of incontext.json, EMA weights), then /train for one epoch on two labelled volumes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from tests.serve._live import Server, free_port, multipart
from tests.serve.conftest import DEMO, REPO

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def server(serve_python: Path, fewshot_export: Path, incontext_checkpoint: Path, tmp_path_factory):
    root = tmp_path_factory.mktemp("monailabel")
    studies = root / "studies"
    studies.mkdir()
    for case in ("mni152_t1", "colin27_t1", "itk_t1"):
        shutil.copy(DEMO / f"{case}.nii.gz", studies / f"{case}.nii.gz")
    app = root / "app"
    shutil.copytree(REPO / "apps" / "monailabel", app, ignore=shutil.ignore_patterns("__pycache__", "logs", "model"))
    port = free_port()
    cmd = [str(serve_python.parent / "monailabel"), "start_server", "--app", str(app), "--studies", str(studies)]
    cmd += ["--conf", "bundle", str(fewshot_export), "--conf", "incontext_checkpoint", str(incontext_checkpoint)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    # the monailabel launcher runs `python -m monailabel.main`: the environment's python must come first on PATH
    env = {**os.environ, "PATH": f"{serve_python.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    srv = Server(cmd, port, root / "server.log", env=env)
    try:
        srv.wait("/info/", timeout=300)
        srv.studies = studies  # type: ignore[attr-defined]
        yield srv
    finally:
        srv.stop()


def _bundle_run(bundle: Path, config: str, out: Path, image: str, **overrides: str) -> Path:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"configs/{config}"]
    cmd += ["--dataset_dir", str(DEMO), "--image_pattern", image, "--output_dir", str(out)]
    for k, v in overrides.items():
        cmd += [f"--{k}", v]
    subprocess.run(cmd + ["--logging_file", "configs/logging.conf"], cwd=bundle, check=True, capture_output=True)
    return next(out.glob("*.nii.gz"))


def _check_on_input_grid(data: bytes, image: Path, tmp: Path, n_classes: int) -> np.ndarray:
    path = tmp / "reply.nii.gz"
    path.write_bytes(data)
    out, ref = nib.load(path), nib.load(image)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-4)
    values = np.asarray(out.dataobj)
    assert set(np.unique(values).tolist()) <= set(range(n_classes + 1))
    return values


def test_info_lists_models_labels_and_trainer(server: Server, class_names: list[str]) -> None:
    info = requests.get(server.url + "/info/", timeout=30).json()
    labels = {n: i for i, n in enumerate(class_names, start=1)}
    assert info["models"]["mass_fewshot"]["labels"] == labels  # background excluded, values 1..N
    assert info["models"]["mass_incontext"]["labels"] == labels
    assert "mass_fewshot" in info["trainers"]


def test_infer_fixed_class_equals_bundle_run(server: Server, fewshot_export: Path, class_names, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    r = requests.post(server.url + "/infer/mass_fewshot", params={"image": "mni152_t1", "output": "image"}, timeout=600)
    latency = time.perf_counter() - t0
    assert r.status_code == 200, r.text[:2000] + server.tail()
    got = _check_on_input_grid(r.content, DEMO / "mni152_t1.nii.gz", tmp_path, len(class_names))
    expected = _bundle_run(fewshot_export, "inference.json", tmp_path / "run", "mni152_t1.nii.gz")
    assert int((got != np.asarray(nib.load(expected).dataobj)).sum()) == 0
    print(f"/infer/mass_fewshot latency {latency:.2f} s")


def test_label_one_segment_all_in_context(
    server: Server, fewshot_export: Path, incontext_checkpoint: Path, bundle_labels, class_names, tmp_path: Path
) -> None:
    with open(bundle_labels["colin27_t1"], "rb") as f:
        r = requests.put(
            server.url + "/datastore/label",
            params={"image": "colin27_t1", "tag": "final"},
            files={"label": ("colin27_t1.nii.gz", f)},
            timeout=60,
        )
    assert r.status_code == 200, r.text
    timings = []
    replies = []
    for _ in range(2):
        t0 = time.perf_counter()
        r = requests.post(server.url + "/infer/mass_incontext", params={"image": "mni152_t1"}, timeout=600)
        timings.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text[:2000] + server.tail()
        replies.append(multipart(r))
    first, second = (rep["params"] for rep in replies)
    assert first["task_encoded"] is True and second["task_encoded"] is False  # one encoding per label set
    assert [Path(p).name for p in first["references"]] == ["colin27_t1.nii.gz"]
    assert first["classes"] == {n: i for i, n in enumerate(class_names, start=1)}
    got = _check_on_input_grid(replies[0]["image"][1], DEMO / "mni152_t1.nii.gz", tmp_path, len(class_names))
    assert np.array_equal(got, _check_on_input_grid(replies[1]["image"][1], DEMO / "mni152_t1.nii.gz", tmp_path, 5))
    # monai.bundle run of incontext.json with the same reference and checkpoint (EMA weights) gives the same map
    split = tmp_path / "split.json"
    ref = {"image": str(DEMO / "colin27_t1.nii.gz"), "label": str(bundle_labels["colin27_t1"])}
    split.write_text(json.dumps({"train": [ref], "test": [ref]}))
    expected = _bundle_run(
        fewshot_export,
        "incontext.json",
        tmp_path / "run",
        "mni152_t1.nii.gz",
        init_checkpoint=str(incontext_checkpoint),
        split_file=str(split),
        task_file=str(tmp_path / "task.pt"),
    )
    assert int((got != np.asarray(nib.load(expected).dataobj)).sum()) == 0
    print(f"/infer/mass_incontext latency: first (encodes the task) {timings[0]:.2f} s, cached {timings[1]:.2f} s")


def test_train_one_epoch_writes_a_model(server: Server, fewshot_export: Path, bundle_labels, class_names) -> None:
    for case in ("colin27_t1", "itk_t1"):
        with open(bundle_labels[case], "rb") as f:
            r = requests.put(
                server.url + "/datastore/label",
                params={"image": case, "tag": "final"},
                files={"label": (f"{case}.nii.gz", f)},
                timeout=60,
            )
        assert r.status_code == 200, r.text
    model = fewshot_export / "models" / "model.pt"
    before = model.stat().st_mtime_ns
    t0 = time.perf_counter()
    r = requests.post(
        server.url + "/train/mass_fewshot",
        params={"run_sync": "true"},
        json={"max_epochs": 1, "device": "cpu", "multi_gpu": False},
        timeout=900,
    )
    latency = time.perf_counter() - t0
    assert r.status_code == 200, r.text[:2000] + server.tail()
    assert model.stat().st_mtime_ns > before, server.tail(120)
    from components.network.nets import FixedClassNet

    state = torch.load(model, map_location="cpu", weights_only=True)
    FixedClassNet("tiny", num_classes=len(class_names)).load_state_dict(state.get("model", state))
    print(f"/train/mass_fewshot (1 epoch, 2 labelled volumes) {latency:.1f} s")
