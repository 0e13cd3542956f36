"""Every exported bundle passes the model zoo's verify checks (re-implemented on monai.bundle: verify_runner.py).

Each bundle is exported to a temporary folder (with seeded random weights of its own network where it has one)
and checked in a subprocess whose working directory is the export, as the zoo's CI runs. A check is skipped only
through ``EXCLUDED``, the counterpart of the zoo's exclusion lists, and every exclusion is explained in the
bundle's README (tested).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.zoo._exports import BUNDLES, REPO, SCHEMA, export_all, random_weights

RUNNER = Path(__file__).with_name("verify_runner.py")
NO_WEIGHTS = "mass_maskgen has no network weights of its own (the SAM2 checkpoint is the user's; SLIC has none)"
EXCLUDED: dict[str, dict[str, str]] = {
    "mass_maskgen": {"model_file": NO_WEIGHTS, "net_in_out": NO_WEIGHTS, "ckpt_export": NO_WEIGHTS},
    "mass_pretrain": {"net_in_out": "three inputs (query image, reference image, reference masks)"},
    "mass_fewshot": {},
    "mass_probe": {},
}
README_PHRASES = {  # what each bundle README must say about its exclusions
    "mass_maskgen": ["no network weights of its own", "verify_net_in_out", "ckpt_export"],
    "mass_pretrain": ["three inputs", "verify_net_in_out"],
}


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    return export_all(tmp_path_factory.mktemp("zoo"))


def run_checks(bundle: Path, excluded: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "2"
    cmd = [sys.executable, str(RUNNER), str(bundle), str(SCHEMA), json.dumps(excluded)]
    res = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("ZOO_RESULT ")]
    assert res.returncode == 0 and lines, (res.stdout + res.stderr)[-4000:]
    return json.loads(lines[-1].removeprefix("ZOO_RESULT "))


@pytest.mark.parametrize(
    "name", [pytest.param(b, marks=pytest.mark.slow) if b == "mass_pretrain" else b for b in BUNDLES]
)  # mass_pretrain: scripting the small in-context network takes ~30 s on 2 cores
def test_exported_bundle_passes_zoo_checks(exports, name: str) -> None:
    results = run_checks(exports[name], EXCLUDED[name])
    failed = {k: v for k, v in results.items() if not (v == "pass" or v.startswith("excluded: "))}
    assert not failed, f"{name}: {failed}"
    for check in ("schema", "version", "files"):
        assert results[check] == "pass", results
    if name == "mass_pretrain":
        assert results["net_in_out_multi"] == "pass"  # the three-input shape check replaces verify_net_in_out
    readme = (REPO / "bundles" / name / "docs" / "README.md").read_text()
    for phrase in README_PHRASES.get(name, []):
        assert phrase in readme, f"{name} README does not explain its zoo exclusion ({phrase!r})"


def test_pretrain_export_ships_the_ema_weights_as_a_plain_state_dict(tmp_path) -> None:
    from tests.zoo._exports import exporter

    ema = random_weights("mass_pretrain", tmp_path / "ckpt.pt", seed=1)
    out = Path(
        exporter().export_bundle("mass_pretrain", str(tmp_path / "b"), weights=str(tmp_path / "ckpt.pt"))["bundle"]
    )
    shipped = torch.load(out / "models" / "model.pt", weights_only=True)
    assert set(shipped) == set(ema) and all(torch.equal(shipped[k], ema[k]) for k in ema)


def test_runner_fails_what_the_zoo_fails(tmp_path) -> None:
    """The checks can fail: a wrong output channel count, a version missing from the changelog, no weights."""
    from tests.zoo._exports import exporter

    bundle = Path(exporter().export_bundle("mass_fewshot", str(tmp_path / "b"))["bundle"])  # no models/model.pt
    meta_file = bundle / "configs" / "metadata.json"
    m = json.loads(meta_file.read_text())
    m["version"] = "9.9.9"
    m["network_data_format"]["outputs"]["pred"]["num_channels"] = 3
    meta_file.write_text(json.dumps(m))
    res = run_checks(bundle, {"ckpt_export": "no weights in this test"})
    assert res["schema"] == "pass"
    assert res["version"].startswith("FAIL") and "changelog" in res["version"]
    assert res["files"].startswith("FAIL") and "models/model.pt" in res["files"]
    assert res["net_in_out"].startswith("FAIL") and "channel" in res["net_in_out"]
