"""The zoo's own ``ci/verify_bundle.py`` on the pull request ``scripts/export_bundle.py --zoo_pr`` writes.

A zoo tree is put together in a temporary folder as the zoo's premerge job sees it: the zoo's ``ci/`` (from a
checkout: ``$MASS_MODEL_ZOO``, ``/tmp/zoo`` or the git mirror; skipped without one) with the pull request's
``ci/bundle_custom_data.py``, ``models/model_info.json``, our ``models/<bundle>`` and, in each, ``eval/schema.json``
(what ``ci/prepare_schema.py`` downloads; here the offline copy of the same schema). Then
``python ci/verify_bundle.py -b <bundle> -m min`` (the CPU premerge) and ``-m full`` (the GPU job's checks, run on
the CPU here) run from the tree's root in a subprocess, as the zoo's CI runs them.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.zoo import _zoo_tools as zt
from tests.zoo._exports import BUNDLES, SCHEMA, WITH_WEIGHTS, exporter, random_weights


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    found = zt.zoo_checkout(tmp_path_factory.mktemp("zoo_checkout"))
    if found is None:
        pytest.skip("no model-zoo checkout ($MASS_MODEL_ZOO, /tmp/zoo or the git mirror): cannot run its ci/")
    return found


def zoo_tree(root: Path, checkout: Path, pr: Path, patched: bool = True) -> Path:
    shutil.copytree(checkout / "ci", root / "ci")
    if patched:
        shutil.copy(pr / "ci" / "bundle_custom_data.py", root / "ci" / "bundle_custom_data.py")
    (root / "models").mkdir()
    shutil.copy(checkout / "models" / "model_info.json", root / "models" / "model_info.json")
    for name in BUNDLES:
        shutil.copytree(pr / "models" / name, root / "models" / name)
        (root / "models" / name / "eval").mkdir()
        shutil.copy(SCHEMA, root / "models" / name / "eval" / "schema.json")
    return root


def verify(root: Path, name: str, mode: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "2"
    cmd = [sys.executable, "ci/verify_bundle.py", "-b", name, "-m", mode]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture
def served(tmp_path):
    """(folder, url): ``folder`` served over HTTP on 127.0.0.1 for the test (the weights host)."""
    folder = tmp_path / "host"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.slow  # 8 verify_bundle.py runs, each importing torch and MONAI (~1 min on 2 cores)
def test_pull_request_without_weights_passes_verify_bundle(checkout: Path, tmp_path: Path) -> None:
    pr = tmp_path / "pr"
    exporter().write_zoo_pr(str(pr), zoo_repo=str(checkout))
    assert not list(pr.glob("models/*/large_files.yml")), "no weights url: no large_files.yml"
    assert not list(pr.glob("models/*/models")), "weights never go into the pull request"
    root = zoo_tree(tmp_path / "zoo", checkout, pr)
    for name in BUNDLES:
        for mode in ("min", "full"):
            r = verify(root, name, mode)
            assert r.returncode == 0, f"verify_bundle.py -b {name} -m {mode}:\n{(r.stdout + r.stderr)[-3000:]}"
            assert "metadata format is verified correctly." in r.stdout, r.stdout
        if name in ("mass_fewshot", "mass_probe"):
            assert "data shape is verified correctly." in r.stdout  # the full run's verify_net_in_out ran


@pytest.mark.slow
def test_exclusions_are_needed(checkout: Path, tmp_path: Path) -> None:
    """With the zoo's unchanged lists, the pull request without weights fails where the exclusions say."""
    pr = tmp_path / "pr"
    exporter().write_zoo_pr(str(pr), zoo_repo=str(checkout))
    root = zoo_tree(tmp_path / "zoo", checkout, pr, patched=False)
    for name in ("mass_maskgen", "mass_fewshot"):
        r = verify(root, name, "min")
        assert r.returncode != 0 and "models/model.pt is not existing" in r.stdout + r.stderr, r.stderr[-2000:]


@pytest.mark.slow  # weights downloaded by the zoo's CI from a local host; full mode scripts three networks (~2 min)
def test_pull_request_with_hosted_weights_passes_verify_bundle(checkout: Path, tmp_path: Path, served) -> None:
    host, url = served
    weights = {}
    for name in WITH_WEIGHTS:
        weights[name] = str(tmp_path / f"{name}.pt")
        random_weights(name, Path(weights[name]))
    metrics = {"mass_fewshot": {"val_mean_dice": 0.5}}
    pr = tmp_path / "pr"
    res = exporter().write_zoo_pr(
        str(pr), weights=weights, weights_url=url, eval_metrics=metrics, zoo_repo=str(checkout)
    )
    assert res["hosted"] == sorted(WITH_WEIGHTS)
    shutil.copytree(pr / "weights", host, dirs_exist_ok=True)  # the upload: <url>/<bundle>/model.pt
    excl = json.loads((pr / "ci_exclusions.json").read_text())
    assert set(excl["exclude_verify_shape_list"]) == {"mass_maskgen", "mass_pretrain"}
    assert set(excl["exclude_verify_preferred_files_list"]) == {"mass_maskgen"}
    assert set(excl["exclude_verify_torchscript_list"]) == {"mass_maskgen"}
    meta = json.loads((pr / "models" / "mass_fewshot" / "configs" / "metadata.json").read_text())
    assert meta["eval_metrics"] == metrics["mass_fewshot"]
    assert "val_mean_dice = 0.5" in (pr / "PULL_REQUEST.md").read_text()
    root = zoo_tree(tmp_path / "zoo", checkout, pr)
    for name in BUNDLES:
        r = verify(root, name, "full")
        assert r.returncode == 0, f"verify_bundle.py -b {name} -m full:\n{(r.stdout + r.stderr)[-3000:]}"
        if name in WITH_WEIGHTS:
            assert (root / "models" / name / "models" / "model.pt").is_file()  # downloaded through large_files.yml
            assert "export weights into TorchScript module successfully." in r.stdout
