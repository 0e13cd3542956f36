"""Metadata pins install where the model zoo installs (Python 3.10 and 3.11), and list only what a bundle imports."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tempfile

import pytest

from tests.zoo._exports import BUNDLES, REPO

IMPORT_TO_DIST = {"skimage": "scikit-image", "ignite": "pytorch-ignite", "itk": "itk-io"}  # itk-io: ITK readers only
CORE = {"torch", "monai", "numpy"}  # pinned by pytorch_version / monai_version / numpy_version
# packages MONAI imports for a bundle (optional imports inside MONAI), found by what the configs/code use
THROUGH_MONAI = {
    "nibabel": ("LoadVolumed", "LoadImage", "NibabelReader"),
    "pytorch-ignite": ("SupervisedTrainer", "SupervisedEvaluator", "CheckpointLoader", "CheckpointSaver", "Handler"),
    "scikit-image": ("KeepLargestConnectedComponent",),
}
COMPANIONS = {"torchvision": "sam2"}  # pinned with the package that requires it (else pip picks another torch)
SDIST_ONLY = {"sam2"}  # PyPI has no wheel of sam2 1.1.0; pip builds it from the sdist


def _exported_text_and_imports(name: str, tmp) -> tuple[str, set[str]]:
    from tests.zoo._exports import exporter

    out = exporter().export_bundle(name, str(tmp / name))["bundle"]
    text, mods = "", set()
    for f in sorted(__import__("pathlib").Path(out).rglob("*")):
        if f.suffix == ".json" or f.suffix == ".py":
            text += f.read_text()
        if f.suffix == ".py":
            for n in ast.walk(ast.parse(f.read_text())):
                if isinstance(n, ast.Import):
                    mods |= {a.name.split(".")[0] for a in n.names}
                elif isinstance(n, ast.ImportFrom) and not n.level and n.module:
                    mods.add(n.module.split(".")[0])
    third = mods - set(sys.stdlib_module_names) - {"components", "__future__"} - CORE
    return text, {IMPORT_TO_DIST.get(m, m) for m in third}


@pytest.mark.parametrize("name", BUNDLES)
def test_required_packages_are_what_the_bundle_imports(name: str, tmp_path) -> None:
    meta = json.loads((REPO / "bundles" / name / "configs" / "metadata.json").read_text())
    text, imported = _exported_text_and_imports(name, tmp_path)
    needed = imported | {d for d, markers in THROUGH_MONAI.items() if any(m in text for m in markers)}
    needed |= {c for c, parent in COMPANIONS.items() if parent in needed}
    assert set(meta["required_packages_version"]) == needed
    assert ("sam2" in needed) == (name == "mass_maskgen")


def _pins() -> set[tuple[str, str]]:
    pins = set()
    for name in BUNDLES:
        meta = json.loads((REPO / "bundles" / name / "configs" / "metadata.json").read_text())
        pins |= {("monai", meta["monai_version"]), ("torch", meta["pytorch_version"]), ("numpy", meta["numpy_version"])}
        pins |= set(meta["required_packages_version"].items())
    return pins


@pytest.mark.slow  # asks PyPI (network)
@pytest.mark.parametrize("python", ["3.10", "3.11"])
def test_pins_install_on_zoo_pythons(python: str) -> None:
    """``pip download --no-deps --only-binary=:all: --python-version X`` of every pin (sam2: its sdist).

    ``pip install --dry-run --target`` resolves exactly as ``pip download`` does but reads only the wheel's
    metadata (PEP 658), so torch's 900 MB wheel is not fetched."""
    bad = {}
    for pkg, ver in sorted(_pins()):
        with tempfile.TemporaryDirectory() as d:
            if pkg in SDIST_ONLY:
                cmd = ["download", "--no-deps", "--no-binary=:all:", "--no-build-isolation", "-d", d]
            else:
                cmd = ["install", "--dry-run", "--ignore-installed", "--no-deps", "--only-binary=:all:"]
                cmd += ["--python-version", python, "--implementation", "cp", "--target", d]
                cmd += [
                    "--platform",
                    "manylinux_2_28_x86_64",
                    "--platform",
                    "manylinux2014_x86_64",
                    "--platform",
                    "any",
                ]
            r = subprocess.run(
                [sys.executable, "-m", "pip", *cmd, f"{pkg}=={ver}"], capture_output=True, text=True, timeout=600
            )
        if r.returncode != 0:
            bad[f"{pkg}=={ver}"] = r.stderr.strip().splitlines()[-1:]
    assert not bad, f"not installable on Python {python}: {bad}"
