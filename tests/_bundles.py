"""One way for tests to reach the repository and run a bundle config, as ``python -m monai.bundle run`` does.

``bundle_workflow("mass_probe", ["train.json", "demo.json"], "train", preset="tiny")`` is a MONAI
``ConfigWorkflow`` of those configs (merged in order) with the bundle's ``metadata.json`` and
``logging.conf``, ``bundle_root`` the bundle folder (unless overridden), the overrides as config ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"


def bundle_dir(bundle: str) -> Path:
    """``bundles/<bundle>`` of the repository."""
    return REPO / "bundles" / bundle


def bundle_workflow(
    bundle: str, configs: str | Sequence[str], kind: str, initialize: bool = False, **overrides: Any
) -> ConfigWorkflow:
    """A ``ConfigWorkflow`` of ``configs`` (names in ``configs/`` or paths) of ``bundle``, workflow type ``kind``
    (``"train"``, ``"infer"``); ``initialize``: initialised already."""
    root = bundle_dir(bundle)
    names = [configs] if isinstance(configs, str) else list(configs)
    files = [n if Path(n).is_absolute() else str(root / "configs" / n) for n in map(str, names)]
    overrides.setdefault("bundle_root", str(root))
    wf = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(root / "configs" / "metadata.json"),
        logging_file=str(root / "configs" / "logging.conf"),
        workflow_type=kind,
        **overrides,
    )
    if initialize:
        wf.initialize()
    return wf
