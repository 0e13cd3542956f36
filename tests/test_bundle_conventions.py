"""Model-zoo conventions every bundle must meet, checked the way the zoo's CI checks them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from tests._bundles import REPO

SCHEMA = Path(__file__).resolve().parent / "resources" / "meta_schema_20240725.json"  # vendored zoo schema
BUNDLES = ["mass_maskgen", "mass_pretrain", "mass_fewshot", "mass_probe"]


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_files_and_metadata(name: str) -> None:
    root = REPO / "bundles" / name
    for rel in ("LICENSE", "configs/metadata.json", "configs/logging.conf", "docs/README.md"):
        assert (root / rel).is_file(), f"{name}: {rel} missing"
    assert "Apache License" in (root / "LICENSE").read_text()
    meta = json.loads((root / "configs/metadata.json").read_text())
    schema = json.loads(SCHEMA.read_text())
    errors = sorted(jsonschema.Draft201909Validator(schema).iter_errors(meta), key=str)
    assert not errors, f"{name}: {[e.message for e in errors[:3]]}"
    assert meta["version"] in meta["changelog"]
    import monai
    import numpy
    import torch

    assert meta["monai_version"] == monai.__version__
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]
    # numpy: the newest release with Python 3.10 wheels (the zoo CI's Python), same major as the one installed here;
    # installability on 3.10 / 3.11 is checked by tests/zoo/test_pins.py (slow)
    assert meta["numpy_version"].split(".")[0] == numpy.__version__.split(".")[0]
    for cfg in (root / "configs").glob("*.json"):
        json.loads(cfg.read_text())  # every config is valid JSON
    for path in root.rglob("*"):
        if path.is_file():
            assert path.stat().st_size <= 25 * 2**20, f"{path} is over the model zoo's 25 MB limit"


def test_components_resolve_from_a_copied_bundle(tmp_path: Path) -> None:
    """A bundle copied elsewhere with ``components/`` beside ``configs/`` imports that copy
    (``monai.bundle run`` puts the bundle root on ``sys.path``)."""
    dst = tmp_path / "copied_bundle"
    (dst / "configs").mkdir(parents=True)
    shutil.copytree(REPO / "components", dst / "components", ignore=shutil.ignore_patterns("__pycache__"))
    probe_cfg = {
        "bundle_root": str(dst),
        "imports": ["$import pathlib", "$import components"],
        "out": str(tmp_path / "where.txt"),
        "run": ["$pathlib.Path(@out).write_text(components.__file__)"],
    }
    (dst / "configs" / "where.json").write_text(json.dumps(probe_cfg))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(dst / "configs" / "where.json")],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert Path((tmp_path / "where.txt").read_text()).resolve().is_relative_to(dst.resolve())


def _walk(node: object, key: str = ""):  # (key, value) of every leaf of a parsed config
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, k)
    elif isinstance(node, list) and not all(isinstance(v, (int, float)) for v in node):
        for v in node:
            yield from _walk(v, key)
    else:
        yield key, node


@pytest.mark.parametrize("name", BUNDLES)
def test_configs_read_like_zoo_configs(name: str) -> None:
    """At most two Python expressions calling into ``components`` per config (the rest are ``_target_``
    entries with named arguments), and the encoder's intensity settings written as values equal to the
    ones the components default to, so a user sees and sets them in the config (maskgen's are SAM2's own
    display windows)."""
    from components.data.intensity import CT_WINDOW, MR_PERCENTILES

    for cfg in sorted((REPO / "bundles" / name / "configs").glob("*.json")):
        leaves = list(_walk(json.loads(cfg.read_text())))
        calls = [
            v
            for _, v in leaves
            if isinstance(v, str) and v.startswith("$") and "components." in v and not v.startswith("$import")
        ]
        assert len(calls) <= 2, f"{cfg.name}: {len(calls)} expressions call components: {calls}"
        for key, value in leaves if name != "mass_maskgen" else []:
            if key == "ct_window":
                assert value == list(CT_WINDOW) or str(value).startswith("@"), f"{cfg.name}: ct_window {value}"
            if key in ("mr_percentiles", "percentiles"):
                assert value == list(MR_PERCENTILES) or str(value).startswith("@"), f"{cfg.name}: {key} {value}"
