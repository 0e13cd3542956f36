"""Fixtures of the live MONAI Label / MONAI Deploy tests.

They run the real servers and apps in the optional environments built by ``scripts/setup_serve.sh``
(``.venv-serve``: MONAI Label 0.8.5; ``.venv-deploy``: MONAI Deploy App SDK 4.0.0); ``make test`` builds
them first. The bundle they serve is a standalone export of ``bundles/mass_fewshot`` (its own
``components``, ``models/model.pt`` and ``model.ts``) with seeded random weights: what is checked is the
plumbing (grids, label values, identity with ``monai.bundle run``), not accuracy.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data" / "demo"


def _env_python(name: str) -> Path:
    python = REPO / name / "bin" / "python"
    if not python.is_file():
        pytest.fail(f"{REPO / name} is missing: build it with `bash scripts/setup_serve.sh` (make setup-serve)")
    return python


@pytest.fixture(scope="session")
def serve_python() -> Path:
    return _env_python(".venv-serve")


@pytest.fixture(scope="session")
def deploy_python() -> Path:
    return _env_python(".venv-deploy")


def _export_module():
    spec = importlib.util.spec_from_file_location("export_bundle", REPO / "scripts" / "export_bundle.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def class_names() -> list[str]:
    return json.loads((REPO / "bundles/mass_fewshot/configs/inference.json").read_text())["class_names"]


@pytest.fixture(scope="session")
def fewshot_export(tmp_path_factory: pytest.TempPathFactory, class_names: list[str]) -> Path:
    """Standalone mass_fewshot export with seeded fixed-class weights, model.pt and model.ts."""
    from components.network.nets import FixedClassNet

    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(3)
    ckpt = root / "ft.pt"
    torch.save({"model": FixedClassNet("tiny", num_classes=len(class_names)).state_dict()}, ckpt)
    out = root / "mass_fewshot"
    _export_module().export_bundle("mass_fewshot", str(out), weights=str(ckpt), torchscript=True)
    return out


@pytest.fixture(scope="session")
def incontext_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mass_pretrain-style container whose plain and EMA weights differ (the EMA ones must be served)."""
    from components.network.nets import build_network

    torch.manual_seed(11)
    plain = build_network("tiny").state_dict()
    torch.manual_seed(12)
    ema = build_network("tiny").state_dict()
    path = tmp_path_factory.mktemp("pretrain") / "model.pt"
    torch.save({"model": plain, "ema_model": ema}, path)
    return path


@pytest.fixture(scope="session")
def bundle_labels(tmp_path_factory: pytest.TempPathFactory, class_names: list[str]) -> dict[str, Path]:
    """Demo label maps in the bundle's numbering (1..N for the demo classes, from the FreeSurfer ids)."""
    classes = json.loads((REPO / "bundles/mass_fewshot/configs/demo.json").read_text())["classes"]
    out = tmp_path_factory.mktemp("labels")
    result = {}
    for case in ("colin27", "itk", "mni152"):
        seg = nib.load(DEMO / f"{case}_seg.nii.gz")
        ids = np.asarray(seg.dataobj)
        lab = np.zeros(ids.shape, np.uint8)
        for value, name in enumerate(class_names, start=1):
            lab[np.isin(ids, classes[name])] = value
        path = out / f"{case}_t1.nii.gz"
        nib.save(nib.Nifti1Image(lab, seg.affine), str(path))
        result[f"{case}_t1"] = path
    return result
