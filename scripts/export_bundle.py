"""Export one bundle of ``bundles/`` as a standalone MONAI bundle folder (the model zoo's layout).

    .venv/bin/python scripts/export_bundle.py mass_maskgen /tmp/export/mass_maskgen

``OUT_DIR`` gets the bundle's ``configs/`` (without the repository's demo overrides ``configs/demo*.json``
unless ``--include_demo``), ``docs/``, ``LICENSE``, ``models/`` if present, plus exactly the modules of
``components`` the bundle needs, as ``OUT_DIR/components/`` (custom code ships inside the bundle, as in
the zoo). The modules are the transitive closure of every ``components.*`` name in the configs (``$import``
lines, ``_target_`` strings, ``$components....`` expressions) over the modules' own imports (found with
``ast``, including imports inside functions), with the ``__init__.py`` of every package on the way.
``monai.bundle run`` puts the bundle root on ``sys.path`` first, so the export imports its own copy; a
module missing from it fails to import there instead of being taken from an installed ``components``.

``--weights PATH`` puts a checkpoint into the export as ``models/model.pt``, the file the model zoo's
``ckpt_export`` and the bundles' inference configs read: a plain state dict of the bundle's ``network_def``.
A training container (``{"model": ..., "ema_model": ...}`` as mass_pretrain and the authors' release write it)
is reduced to its EMA weights (the plain ones when it has no EMA), the weights inference uses.

``--torchscript`` (with weights) also writes ``models/model.ts`` with MONAI's ``ckpt_export`` run inside the
export (its own ``components``), for MONAI Deploy's bundle operator and TorchScript model zoo users; the
scripted network must give the eager network's output on a test window, or the export fails.

Every file under ``models/`` gets a ``large_files.yml`` entry (``path``, ``url``, ``hash_val`` = SHA-256,
``hash_type``); ``url`` stays empty unless ``--weights_url`` gives the folder the files are hosted in.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import fire

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "components"
NAME_RE = re.compile(rf"\b{PACKAGE}(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
DEMO_CONFIGS = ("demo*.json",)


def _module_file(name: str, root: Path) -> Path | None:
    """Source file of the module or package ``name`` under ``root`` (the folder holding ``components``)."""
    path = root.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def _longest_module(dotted: str, root: Path) -> str | None:
    """``components.a.b.attr`` -> ``components.a.b`` (the longest prefix that is a module or package)."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if _module_file(name, root) is not None:
            return name
    return None


def _strings(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def config_modules(config_files: Iterable[Path], root: Path = REPO) -> set[str]:
    """Modules of ``components`` named anywhere in the JSON configs."""
    found: set[str] = set()
    for f in config_files:
        for s in _strings(json.loads(Path(f).read_text())):
            for m in NAME_RE.findall(s):
                name = _longest_module(m, root)
                if name is None:
                    raise ValueError(f"{f}: {m!r} names no module of {PACKAGE}")
                found.add(name)
    return found


def imported_modules(name: str, root: Path = REPO) -> set[str]:
    """Modules of ``components`` that module ``name`` imports (anywhere in its body)."""
    path = _module_file(name, root)
    assert path is not None, name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        candidates: list[str] = []
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from ..a import b
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            candidates = [mod] + [f"{mod}.{a.name}" for a in node.names]  # `from pkg import module`
        for c in candidates:
            if c == PACKAGE or c.startswith(PACKAGE + "."):
                m = _longest_module(c, root)
                if m is not None:
                    found.add(m)
    return found


def module_closure(start: Iterable[str], root: Path = REPO) -> set[str]:
    """``start`` plus everything it imports, transitively, plus the packages containing them."""
    todo = list(start)
    done: set[str] = set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:n]) for n in range(1, len(parts))]  # parent packages run their __init__
        todo += sorted(imported_modules(name, root) - done)
    return done


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_large_files(bundle: Path, weights_url: str = "") -> Path | None:
    """``large_files.yml`` for every file under ``bundle/models``; returns its path (None: no weights)."""
    files = sorted(p for p in (bundle / "models").rglob("*") if p.is_file()) if (bundle / "models").is_dir() else []
    if not files:
        return None
    lines = []
    if not weights_url:
        lines.append("# url: no public host is known for these weights yet; fill it in before publishing.")
    lines.append("large_files:")
    for p in files:
        rel = p.relative_to(bundle).as_posix()
        url = f"{weights_url.rstrip('/')}/{p.name}" if weights_url else ""
        lines += [
            f'  - path: "{rel}"',
            f'    url: "{url}"',
            f'    hash_val: "{_sha256(p)}"',
            '    hash_type: "sha256"',
        ]
    out = bundle / "large_files.yml"
    out.write_text("\n".join(lines) + "\n")
    return out


def inference_state_dict(path: str | Path) -> dict:
    """The weights inference uses from a checkpoint file: a state dict as is, a container's EMA (else plain) weights."""
    import torch

    from components.network.release_checkpoint import read_release_state_dict

    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    return read_release_state_dict(path, prefer_ema=True)


def adopt_preset(bundle: Path, weights: str | Path) -> str | None:
    """Write the preset ``weights`` were made with into every exported config that names one (top-level
    ``"preset"``), so ``network_def`` is the network the weights need; returns it (None: not a MASS network).

    Without this, weights of the ``tiny`` demo exported under a config saying ``"small"`` would fail in
    ``ckpt_export`` and in every ``monai.bundle run`` of the export.
    """
    import re

    from components.network.release_checkpoint import ReleaseCheckpointError, preset_of_checkpoint

    try:
        found = preset_of_checkpoint(weights, encoder_only=True)
    except (ReleaseCheckpointError, ValueError, KeyError):
        return None
    top_level = re.compile(r'^(    "preset": )"\w+"(,?)$', re.M)  # the config's own key, formatting kept
    for cfg in sorted((bundle / "configs").glob("*.json")):
        text = cfg.read_text()
        new = top_level.sub(rf'\g<1>"{found}"\g<2>', text, count=1)
        if new != text:
            cfg.write_text(new)
    return found


def check_weights_load(bundle: Path, weights: str | Path, config: str = "inference.json") -> None:
    """``ValueError`` naming ``weights`` unless ``models/model.pt`` loads strictly into the exported
    ``network_def`` of ``config`` (a bundle without that config or id is not checked)."""
    import torch
    from monai.bundle import ConfigParser

    if not (bundle / "configs" / config).is_file():
        return
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    if "network_def" not in parser:
        return
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def")
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ValueError(
            f"{weights}: weights do not load into the exported network_def of configs/{config} ({first}); "
            "export weights of this bundle's network"
        ) from None


def write_torchscript(bundle: Path, config: str = "inference.json") -> Path:
    """``models/model.ts`` of an exported bundle by ``python -m monai.bundle ckpt_export`` (run in the bundle, so
    its own ``components`` are used), checked against the eager network on one window."""
    import subprocess
    import sys

    import torch
    from monai.bundle import ConfigParser

    target = bundle / "models" / "model.ts"
    cmd = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", "models/model.ts"]
    cmd += ["--ckpt_file", "models/model.pt", "--meta_file", "configs/metadata.json"]
    cmd += ["--config_file", f"configs/{config}", "--bundle_root", "."]
    res = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True)
    if res.returncode != 0 or not target.is_file():
        raise RuntimeError(f"{bundle}: ckpt_export failed: {(res.stderr or res.stdout).strip().splitlines()[-1:]}")
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / config))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    scripted = torch.jit.load(str(target), map_location="cpu")
    window = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager_out, script_out = net.eval()(window), scripted.eval()(window)
    if not torch.allclose(eager_out, script_out, atol=1e-4):
        diff = float((eager_out - script_out).abs().max())
        raise RuntimeError(f"{target}: TorchScript output differs from the eager network by up to {diff:.3g}")
    return target


def export_bundle(
    name: str,
    out_dir: str,
    include_demo: bool = False,
    weights_url: str = "",
    overwrite: bool = False,
    bundles_dir: str = "",
    weights: str = "",
    torchscript: bool = False,
) -> dict[str, object]:
    """Write the standalone copy of ``bundles/<name>`` to ``out_dir``; returns what was written.

    Args:
        name: bundle folder name under ``bundles/`` (e.g. ``mass_pretrain``).
        out_dir: the new bundle root (must not exist unless ``overwrite``).
        include_demo: keep ``configs/demo*.json`` (they point into this repository's demo data).
        weights_url: folder URL the ``models/`` files are published under (``large_files.yml``).
        overwrite: replace an existing ``out_dir``.
        bundles_dir: where the bundles are (default: this repository's ``bundles/``).
        weights: checkpoint to ship as ``models/model.pt`` (a training container is reduced to its EMA weights).
        torchscript: also write ``models/model.ts`` (``monai.bundle ckpt_export`` of ``network_def``; needs ``weights``).
    """
    if torchscript and not weights:
        raise ValueError("--torchscript needs --weights (the TorchScript file is made from them)")
    src = Path(bundles_dir or REPO / "bundles") / name
    if not (src / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"{src}: not a bundle (no configs/metadata.json)")
    out = Path(out_dir)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists (use --overwrite)")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    skip = () if include_demo else DEMO_CONFIGS
    shutil.copytree(src / "configs", out / "configs", ignore=shutil.ignore_patterns("__pycache__", *skip))
    for folder in ("docs", "models"):
        if (src / folder).is_dir():
            shutil.copytree(src / folder, out / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(src / "LICENSE", out / "LICENSE")

    modules = module_closure(config_modules(sorted((out / "configs").glob("*.json"))))
    for m in sorted(modules):
        f = _module_file(m, REPO)
        assert f is not None
        dst = out / f.relative_to(REPO)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dst)
    if weights:
        import torch

        (out / "models").mkdir(exist_ok=True)
        torch.save(inference_state_dict(weights), out / "models" / "model.pt")
        adopt_preset(out, weights)
        check_weights_load(out, weights)
    if torchscript:
        write_torchscript(out)
    large = write_large_files(out, weights_url)
    return {"bundle": str(out), "modules": sorted(modules), "large_files": str(large) if large else None}


def main(
    name: str,
    out_dir: str,
    include_demo: bool = False,
    weights_url: str = "",
    overwrite: bool = False,
    weights: str = "",
    torchscript: bool = False,
) -> None:
    """CLI: ``scripts/export_bundle.py NAME OUT_DIR [--weights CKPT [--torchscript]] [--weights_url URL] [--include_demo]
    [--overwrite]``."""
    res = export_bundle(
        name,
        out_dir,
        include_demo=include_demo,
        weights_url=weights_url,
        overwrite=overwrite,
        weights=weights,
        torchscript=torchscript,
    )
    mods = res["modules"]
    assert isinstance(mods, list)
    print(f"{res['bundle']}: {len(mods)} modules of {PACKAGE}")
    for m in mods:
        print(f"  {m}")
    if res["large_files"]:
        print(f"weights listed in {res['large_files']}")


if __name__ == "__main__":
    fire.Fire(main)
