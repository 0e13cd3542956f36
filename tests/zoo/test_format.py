"""The zoo's format check (black, isort, flake8) on exported code, as its ruff equivalent with this project's settings.

``ruff format`` is black's style and ``ruff check`` covers the pyflakes / pycodestyle / isort rules this project
enables (pyproject.toml, line length 120): both run on each export's Python files from outside the repository.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.zoo._exports import BUNDLES, REPO, exporter

RUFF = Path(sys.executable).with_name("ruff")


@pytest.mark.skipif(not RUFF.is_file(), reason="ruff is not installed in this environment")
def test_exported_code_passes_format_and_lint(tmp_path) -> None:
    for name in BUNDLES:
        exporter().export_bundle(name, str(tmp_path / name))
    config = ["--config", str(REPO / "pyproject.toml")]
    for cmd in (["format", "--check"], ["check"]):
        r = subprocess.run([str(RUFF), *cmd, *config, str(tmp_path)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"ruff {' '.join(cmd)}: {(r.stdout + r.stderr)[-3000:]}"
