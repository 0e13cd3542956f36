"""Fixtures of the live MONAI Label / MONAI Deploy tests.

They run the real servers and apps in the optional environments built by ``scripts/setup_serve.sh``
(``.venv-serve``: MONAI Label 0.8.5; ``.venv-deploy``: MONAI Deploy App SDK 4.0.0); ``make test`` builds
them first. The bundle they serve is a standalone export of ``bundles/mass_fewshot`` (its own
``components``, ``models/model.pt`` and ``model.ts``) with seeded random weights: what is checked is the
plumbing (grids, label values, identity with ``monai.bundle run``), not accuracy.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.serve._live import CLASS_NAMES, REPO, make_bundle_labels, make_export, make_incontext_checkpoint


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


@pytest.fixture(scope="session")
def class_names() -> list[str]:
    return list(CLASS_NAMES)


@pytest.fixture(scope="session")
def fewshot_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_export(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="session")
def incontext_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_incontext_checkpoint(tmp_path_factory.mktemp("pretrain") / "model.pt")


@pytest.fixture(scope="session")
def bundle_labels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_bundle_labels(tmp_path_factory.mktemp("labels"))
