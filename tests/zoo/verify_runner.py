"""The model zoo's bundle checks, re-implemented on ``monai.bundle``; run inside one bundle folder.

    python verify_runner.py BUNDLE_DIR SCHEMA_JSON '{"net_in_out": "why", ...}'   # excluded checks + reasons

Prints one JSON object ``{check: "pass" | "excluded: why" | "FAIL: error"}`` for the checks

- ``schema``: ``monai.bundle.verify_metadata`` against the given schema file (no download: the file exists);
- ``version``: ``version`` is a key of ``changelog``; monai / pytorch / numpy versions and every
  ``required_packages_version`` value are exact ``X.Y.Z`` pins;
- ``files``: ``LICENSE`` and ``configs/metadata.json`` (required), ``configs/inference.json``,
  ``configs/logging.conf``, ``docs/README.md``, ``docs/data_license.txt`` and ``models/model.pt`` (preferred,
  ``model.pt`` may instead be a ``large_files.yml`` entry); no file over 25 MB unless ``large_files.yml`` lists it;
- ``net_in_out``: ``monai.bundle.verify_net_in_out`` of ``network_def`` in ``configs/inference.json``
  (fake input ``torch.rand(1, C, *shape)`` with n = p = any = 1, on the CPU);
- ``ckpt_export``: ``monai.bundle.ckpt_export`` (TorchScript) of ``models/model.pt``, then ``torch.jit.load`` of the
  ``.ts`` and its output compared with the eager network loaded from the same weights.

Like ``monai.bundle run``, the bundle folder comes first on ``sys.path``: its own ``components/`` is imported.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from pathlib import Path

MB25 = 25 * 2**20
PIN = re.compile(r"^\d+\.\d+(\.\d+)?$")


def _large_files(root: Path) -> set[str]:
    f = root / "large_files.yml"
    if not f.is_file():
        return set()
    import yaml

    return {e["path"] for e in (yaml.safe_load(f.read_text()) or {}).get("large_files", [])}


def check_schema(root: Path, schema: str) -> None:
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=schema)


def check_version(root: Path) -> None:
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    if meta["version"] not in meta.get("changelog", {}):
        raise ValueError(f"version {meta['version']} is not a key of changelog")
    pins = {k: meta[k] for k in ("monai_version", "pytorch_version", "numpy_version")}
    pins.update(meta.get("required_packages_version", {}))
    loose = {k: v for k, v in pins.items() if not PIN.match(str(v))}
    if loose:
        raise ValueError(f"not exact pins: {loose}")


def check_files(root: Path, need_model: bool = True) -> None:
    large = _large_files(root)
    missing = [f for f in ("LICENSE", "configs/metadata.json") if not (root / f).is_file()]
    preferred = ["configs/inference.json", "configs/logging.conf", "docs/README.md", "docs/data_license.txt"]
    missing += [f for f in preferred if not (root / f).is_file()]
    if need_model and not (root / "models" / "model.pt").is_file() and "models/model.pt" not in large:
        missing.append("models/model.pt")
    if missing:
        raise ValueError(f"necessary files missing: {missing}")
    big = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.stat().st_size > MB25 and p.relative_to(root).as_posix() not in large
    ]
    if big:
        raise ValueError(f"over 25 MB and not in large_files.yml: {big}")


def check_net_in_out(root: Path) -> None:
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=str(root / "configs" / "metadata.json"),
        config_file=str(root / "configs" / "inference.json"),
        device="cpu",
        bundle_root=str(root),
    )


def check_net_in_out_multi(root: Path) -> None:
    """``verify_net_in_out`` for a network with several inputs (it feeds one tensor): one fake tensor per metadata
    input, output channels = the declared count (-1: one per channel of the last input), output dtype."""
    import torch
    from monai.bundle import ConfigParser

    meta = json.loads((root / "configs" / "metadata.json").read_text())
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser["bundle_root"] = str(root)
    net = parser.get_parsed_content("network_def").eval()
    inputs = _fake_inputs(meta)
    with torch.no_grad():
        out = net(*inputs)
    spec = next(iter(meta["network_data_format"]["outputs"].values()))
    want = spec["num_channels"] if spec["num_channels"] > 0 else inputs[-1].shape[1]
    if out.shape[1] != want or out.shape[2:] != inputs[0].shape[2:]:
        raise ValueError(
            f"output {tuple(out.shape)}: expected {want} channels on the input grid {tuple(inputs[0].shape)}"
        )
    if str(out.dtype) != "torch." + spec["dtype"]:
        raise ValueError(f"output dtype {out.dtype}, metadata says {spec['dtype']}")


def _fake_inputs(meta: dict) -> list:
    """One random tensor per ``network_data_format`` input (n = 1; M = 2 masks when the count is open)."""
    import torch
    from monai.bundle.scripts import _get_fake_spatial_shape

    out = []
    for spec in meta["network_data_format"]["inputs"].values():
        c = spec["num_channels"] if spec["num_channels"] > 0 else 2
        x = torch.rand(1, c, *_get_fake_spatial_shape(spec["spatial_shape"], n=1))
        out.append((x > 0.5).float() if spec["format"] == "segmentation" else x)
    return out


def check_ckpt_export(root: Path) -> None:
    import torch
    from monai.bundle import ConfigParser, ckpt_export

    cfg, meta_file = root / "configs" / "inference.json", root / "configs" / "metadata.json"
    ts = root / "models" / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts),
        ckpt_file=str(root / "models" / "model.pt"),
        meta_file=str(meta_file),
        config_file=str(cfg),
        bundle_root=str(root),
    )
    scripted = torch.jit.load(str(ts), map_location="cpu")
    parser = ConfigParser()
    parser.read_config(str(cfg))
    parser["bundle_root"] = str(root)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    torch.manual_seed(0)
    inputs = _fake_inputs(json.loads(meta_file.read_text()))
    with torch.no_grad():
        a, b = net(*inputs), scripted(*inputs)
    if a.shape != b.shape or not torch.allclose(a, b, atol=1e-4, rtol=1e-4):
        raise ValueError(f"TorchScript output differs from eager: max |diff| {(a - b).abs().max().item()}")


def main(root: Path, schema: str, excluded: dict[str, str]) -> dict[str, str]:
    os.chdir(root)
    sys.path.insert(0, str(root))
    checks = {
        "schema": lambda: check_schema(root, schema),
        "version": lambda: check_version(root),
        "files": lambda: check_files(root, need_model="model_file" not in excluded),
        "net_in_out": lambda: check_net_in_out(root),
        "net_in_out_multi": lambda: check_net_in_out_multi(root),
        "ckpt_export": lambda: check_ckpt_export(root),
    }
    res: dict[str, str] = {f"{k} (part of files)": f"excluded: {v}" for k, v in excluded.items() if k == "model_file"}
    if (
        "net_in_out" not in excluded
        or len(json.loads((root / "configs" / "metadata.json").read_text())["network_data_format"]["inputs"]) < 2
    ):
        checks.pop("net_in_out_multi")
    for name, fn in checks.items():
        if name in excluded:
            res[name] = f"excluded: {excluded[name]}"
            continue
        try:
            fn()
            res[name] = "pass"
        except Exception as exc:  # noqa: BLE001 - reported per check
            res[name] = f"FAIL: {type(exc).__name__}: {exc}"[:2000]
            traceback.print_exc(file=sys.stderr)
    return res


if __name__ == "__main__":
    import torch

    torch.set_num_threads(2)
    print("ZOO_RESULT " + json.dumps(main(Path(sys.argv[1]).resolve(), sys.argv[2], json.loads(sys.argv[3]))))
