"""Exported bundles with weights, shared by the model-zoo tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests._bundles import REPO
from tests._scripts import load_script

SCHEMA = REPO / "tests" / "resources" / "meta_schema_20240725.json"
BUNDLES = ("mass_maskgen", "mass_pretrain", "mass_fewshot", "mass_probe")
WITH_WEIGHTS = ("mass_pretrain", "mass_fewshot", "mass_probe")  # maskgen has no network weights of its own


def exporter():
    return load_script("export_bundle")


def default_network(name: str) -> torch.nn.Module:
    """``network_def`` of the bundle's ``configs/inference.json`` at its defaults (this repository's code)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / name / "configs" / "inference.json"))
    return parser.get_parsed_content("network_def")


def random_weights(name: str, path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random weights of the bundle's network (stand-ins for trained ones, same container the bundle
    writes: mass_pretrain a ``{"model", "ema_model"}`` training container, the others a plain state dict).
    Returns the state dict inference should use (the EMA one for mass_pretrain)."""
    torch.manual_seed(seed)
    sd = {k: v.clone() for k, v in default_network(name).state_dict().items()}
    if name == "mass_pretrain":
        ema = {k: (v + 0.01 * torch.randn_like(v)) if v.is_floating_point() else v.clone() for k, v in sd.items()}
        torch.save({"model": sd, "ema_model": ema, "epoch": 1}, path)
        return ema
    torch.save(sd, path)
    return sd


def export_all(root: Path, weights_url: str = "") -> dict[str, Path]:
    ex = exporter()
    out = {}
    for b in BUNDLES:
        w = ""
        if b in WITH_WEIGHTS:
            w = str(root / f"{b}_weights.pt")
            random_weights(b, Path(w))
        out[b] = Path(ex.export_bundle(b, str(root / b), weights=w, weights_url=weights_url)["bundle"])
    return out


def meta(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())
