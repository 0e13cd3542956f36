"""Publish -> serve over HTTP on 127.0.0.1 -> ``monai.bundle download`` -> weights -> few-shot inference.

The release folder written by ``scripts/publish_bundle.py`` is served by a local ``http.server`` (free port,
daemon thread, shut down by the fixture, every subprocess bounded by a timeout). ``monai.bundle download``
accepts an arbitrary location only through ``--url`` (its sources ``github``, ``ngc``, ``monaihosting`` and
``huggingface_hub`` build their own host names), so the bundle zip comes through ``--url``; the weights come
through ``monai.bundle download_large_files`` and ``large_files.yml`` (SHA-256 checked).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests._scripts import load_script
from tests.zoo._exports import exporter, random_weights

NAME = "mass_fewshot"


def _publisher():
    return load_script("publish_bundle")


@pytest.fixture
def served(tmp_path):
    """(release_dir, base_url): a folder served on 127.0.0.1 for the duration of the test."""
    release = tmp_path / "release"
    release.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(release))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        yield release, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _monai(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "2"
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def _publish(tmp_path: Path, release: Path, url: str) -> dict:
    random_weights(NAME, tmp_path / "w.pt")
    bundle = exporter().export_bundle(NAME, str(tmp_path / "export" / NAME), weights=str(tmp_path / "w.pt"))["bundle"]
    return _publisher().publish_bundle(bundle, str(release), url)


@pytest.mark.slow  # ~40 s: two downloads and an inference run in subprocesses
def test_publish_download_and_run(served, tmp_path, demo_data) -> None:
    release, url = served
    res = _publish(tmp_path, release, url)
    info = json.loads((release / "model_info.json").read_text())
    assert info[res["tag"]]["source"] == f"{url}/{res['tag']}.zip"
    dl = tmp_path / "downloaded"
    r = _monai(["download", "--name", NAME, "--url", info[res["tag"]]["source"], "--bundle_dir", str(dl)], tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    zip_sha = hashlib.sha256((dl / f"{NAME}.zip").read_bytes()).hexdigest()
    assert zip_sha == info[res["tag"]]["checksum"]  # the model_info.json checksum is the zip's
    bundle = dl / NAME
    assert not (bundle / "models" / "model.pt").exists()  # weights travel separately
    r = _monai(["download_large_files", "--bundle_path", str(bundle)], tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert (bundle / "models" / "model.pt").read_bytes() == (
        tmp_path / "export" / NAME / "models" / "model.pt"
    ).read_bytes()

    out = tmp_path / "seg"
    args = ["run", "--config_file", "configs/inference.json", "--logging_file", "configs/logging.conf"]
    args += ["--dataset_dir", str(demo_data), "--image_pattern", "itk_t1.nii.gz", "--output_dir", str(out)]
    r = _monai(args, bundle, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    seg = nib.load(out / "itk_t1_seg.nii.gz")
    assert seg.shape == nib.load(demo_data / "itk_t1.nii.gz").shape
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= set(range(6))


def test_tampered_weights_are_refused(served, tmp_path) -> None:
    release, url = served
    res = _publish(tmp_path, release, url)
    weights = release / f"{res['tag']}_files" / "models" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-16] + b"\0" * 16)  # the host serves a different file
    dl = tmp_path / "downloaded"
    r = _monai(["download", "--name", NAME, "--url", res["source"], "--bundle_dir", str(dl)], tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    r = _monai(["download_large_files", "--bundle_path", str(dl / NAME)], tmp_path)
    assert r.returncode != 0
    assert "sha256 hash check of downloaded file failed" in r.stderr, r.stderr[-3000:]
    assert not (dl / NAME / "models" / "model.pt").exists()  # nothing written
