"""Shared fixtures: the repository root, the shared real data and the embedded demo data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests._bundles import REPO

REPO_ROOT = REPO
SHARED_DIR = Path(os.environ.get("MASS_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.fail(f"shared material not found at {SHARED_DIR} (set MASS_SHARED_DIR)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def shared_data(shared_dir: Path) -> Path:
    return shared_dir / "data"


@pytest.fixture(scope="session")
def meta_schema() -> dict:
    """The model zoo's metadata schema, vendored in tests/resources (no network, no ../shared)."""
    return json.loads((REPO_ROOT / "tests" / "resources" / "meta_schema_20240725.json").read_text())


@pytest.fixture(scope="session")
def demo_data() -> Path:
    return REPO_ROOT / "data" / "demo"


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test: on a busy 2-core machine several times faster than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
