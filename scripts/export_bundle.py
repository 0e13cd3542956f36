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

``--zoo_pr DIR`` writes a model-zoo pull request for all four bundles (see ``docs/model_zoo.md``)::

    .venv/bin/python scripts/export_bundle.py --zoo_pr /tmp/zoo_pr [--zoo_repo MODEL_ZOO_CHECKOUT]
        [--weights "{'mass_fewshot': 'ckpt.pt', ...}" --weights_url https://host/mass]
        [--eval_metrics "{'mass_fewshot': {'mean_dice': 0.8}}"]

- ``DIR/models/<name>/``: each bundle in the zoo's layout, styled as the zoo's code-format check wants it
  (Python through ``ruff`` at black ``--skip-magic-trailing-comma`` / isort ``profile=black`` settings, line length
  120, ``components`` sorted as a third-party package as the zoo's isort sees it; JSON as pre-commit's
  ``pretty-format-json --indent=4``; no executable bits); weights are never part of the pull request;
- ``DIR/weights/<name>/model.pt``: the weights to upload, as ``<weights_url>/<name>/model.pt``;
  the bundle gets a ``large_files.yml`` only with a real url (the zoo's CI downloads every entry, and an empty url
  fails there with ``unknown url type: ''``);
- ``DIR/ci_exclusions.json``: the zoo's ``ci/bundle_custom_data.py`` lists each bundle must join, with the reason;
  with ``--zoo_repo``, also ``DIR/ci/bundle_custom_data.py``, the zoo's file with those entries added;
- ``DIR/PULL_REQUEST.md``: the pull-request text in the zoo's template (``eval_metrics`` only for real weights).
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
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


# --- model-zoo pull request ------------------------------------------------------------------------------------

ZOO_BUNDLES = ("mass_maskgen", "mass_pretrain", "mass_fewshot", "mass_probe")
ZOO_LINE_LENGTH = 120  # the zoo's black (pyproject.toml), isort and flake8 (setup.cfg) line length
ZOO_MAX_KB = 1024  # pre-commit check-added-large-files --maxkb
NO_OWN_WEIGHTS = {  # bundles whose network_def needs weights that are not theirs to ship
    "mass_maskgen": "no network weights of its own: network_def is the SAM2 predictor, whose checkpoint the user "
    "supplies (the SLIC and label-map sources have no network)"
}
PERSONAL_PATH = re.compile(r"(^|[\s\"'=])/(home|Users)/[^/\s]+")


def _ruff() -> str:
    here = Path(sys.executable).with_name("ruff")
    found = str(here) if here.is_file() else shutil.which("ruff")
    if not found:
        raise RuntimeError("the zoo styling needs ruff (pip install -e '.[dev]'): not found next to python or on PATH")
    return found


def zoo_style(bundle: Path) -> None:
    """Restyle an exported bundle in place as the zoo's format checks want it (nothing outside ``bundle``).

    - Python: ``ruff check --select I --fix`` then ``ruff format``, isolated from this repository's settings, with
      the zoo's: line length 120, black's ``--skip-magic-trailing-comma`` (``format.skip-magic-trailing-comma``),
      isort ``profile = black`` without splitting on a trailing comma, ``components`` a third-party package (the zoo's
      isort knows only ``models`` as first party, and ``components`` is no top-level folder of the zoo);
    - JSON: ``json.dumps(indent=4)`` of the parsed file plus a newline, pre-commit's ``pretty-format-json
      --no-sort-keys --indent=4`` output (keys kept in order, non-ASCII as ``\\uXXXX`` escapes);
    - files 0644, folders 0755 (pre-commit's check-executables-have-shebangs fails an executable file).
    """
    for p in sorted(bundle.rglob("*")):
        if p.is_symlink():
            raise ValueError(f"{p}: symbolic link in an export (the zoo's pull request cannot carry it)")
        p.chmod(0o755 if p.is_dir() else 0o644)
    for cfg in sorted(bundle.rglob("*.json")):
        try:
            obj = json.loads(cfg.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{cfg}: not valid JSON ({e})") from None
        cfg.write_text(json.dumps(obj, indent=4) + "\n")
    py = [str(p) for p in sorted(bundle.rglob("*.py"))]
    if not py:
        return
    common = ["--isolated", "--line-length", str(ZOO_LINE_LENGTH), "--target-version", "py39", "--quiet"]
    isort = [
        "check",
        "--select",
        "I",
        "--fix",
        "--config",
        'lint.isort.known-third-party = ["components"]',
        "--config",
        "lint.isort.split-on-trailing-comma = false",
    ]
    black = ["format", "--config", "format.skip-magic-trailing-comma = true"]
    for args in (isort, black):
        res = subprocess.run([_ruff(), *args, *common, *py], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{bundle}: ruff {args[0]} failed: {(res.stderr or res.stdout).strip()[-2000:]}")


def _pr_file_problems(bundle: Path) -> list[str]:
    """What the zoo refuses in a bundle: a version missing from its changelog or a package version that is not an
    exact pin (the zoo's pull-request checklist), a file over ``ZOO_MAX_KB`` (pre-commit check-added-large-files),
    a config naming a path under a personal home folder (the checklist)."""
    problems = []
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    if meta.get("version") not in meta.get("changelog", {}):
        problems.append(f"{bundle}/configs/metadata.json: version {meta.get('version')!r} is not a key of changelog")
    pins = {k: meta.get(k, "") for k in ("monai_version", "pytorch_version", "numpy_version")}
    pins.update(meta.get("required_packages_version", {}))
    loose = {k: v for k, v in pins.items() if not re.fullmatch(r"\d+(\.\d+)+", str(v))}
    if loose:
        problems.append(f"{bundle}/configs/metadata.json: versions that are not exact pins: {loose}")
    for p in sorted(q for q in bundle.rglob("*") if q.is_file()):
        kb = math.ceil(p.stat().st_size / 1024)
        if kb > ZOO_MAX_KB:
            problems.append(f"{p}: {kb} KB, over the zoo's {ZOO_MAX_KB} KB limit for an added file")
    for cfg in sorted((bundle / "configs").glob("*.json")):
        for s in _strings(json.loads(cfg.read_text())):
            if PERSONAL_PATH.search(s):
                problems.append(f"{cfg}: names a personal path ({s[:80]!r})")
    return problems


def zoo_exclusions(bundle: Path, name: str, hosted: bool) -> dict[str, str]:
    """``{list name in the zoo's ci/bundle_custom_data.py: reason}`` for one exported bundle.

    ``hosted``: its weights are listed in ``large_files.yml`` with a real url (the zoo's CI downloads them)."""
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    out: dict[str, str] = {}
    own = NO_OWN_WEIGHTS.get(name)
    inputs = list(meta.get("network_data_format", {}).get("inputs", {}))
    if own:
        out["exclude_verify_preferred_files_list"] = f"{own}; models/model.pt never exists"
        out["exclude_verify_shape_list"] = f"{own}; verify_net_in_out would need it"
        out["exclude_verify_torchscript_list"] = f"{own}; nothing to export to TorchScript"
        return out
    if len(inputs) > 1:
        out["exclude_verify_shape_list"] = (
            f"network_def takes {len(inputs)} inputs ({', '.join(inputs)}); verify_net_in_out feeds one tensor"
        )
    if not hosted:
        out["exclude_verify_preferred_files_list"] = (
            "weights not published yet (no large_files.yml url), so models/model.pt is absent"
        )
        out["exclude_verify_torchscript_list"] = "weights not published yet; ckpt_export needs models/model.pt"
    return out


def _list_literal(name: str, items: list[str], comments: dict[str, str]) -> str:
    """``name = [...]`` as the zoo's black (``--skip-magic-trailing-comma``) writes it: one line when it fits and
    carries no comment, else one item per line with a trailing comma; ``comments[item]`` above its item."""
    one_line = f"{name} = [{', '.join(json.dumps(i) for i in items)}]"
    if not any(i in comments for i in items) and len(one_line) <= ZOO_LINE_LENGTH:
        return one_line
    lines = [f"{name} = ["]
    for i in items:
        if i in comments:
            lines += [f"    # {c}" for c in _wrap(comments[i], ZOO_LINE_LENGTH - 6)]
        lines.append(f"    {json.dumps(i)},")
    return "\n".join(lines + ["]"])


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def patch_bundle_custom_data(source: str, entries: dict[str, dict[str, str]]) -> str:
    """The zoo's ``ci/bundle_custom_data.py`` text with ``entries`` (``{list name: {bundle: reason}}``) appended to
    its module-level lists, each with its reason as a comment; a list it lacks is a ``ValueError``."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    spans = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if isinstance(node.value, ast.List):
                spans[node.targets[0].id] = node
    missing = sorted(set(entries) - set(spans))
    if missing:
        raise ValueError(f"ci/bundle_custom_data.py: no module-level list {missing} (the zoo's CI changed?)")
    for list_name in sorted(entries, key=lambda n: -spans[n].lineno):  # bottom first: line numbers stay valid
        node = spans[list_name]
        items = [ast.literal_eval(e) for e in node.value.elts]
        items += [bundle for bundle in entries[list_name] if bundle not in items]
        assert node.end_lineno is not None
        old = "".join(lines[node.lineno - 1 : node.end_lineno])
        had_comments = "#" in old  # keep the zoo's own comments inside a list: rewrite only what we can
        if had_comments:
            raise ValueError(f"ci/bundle_custom_data.py: {list_name} holds comments; add {entries[list_name]} by hand")
        comments = {bundle: f"{bundle}: {reason}" for bundle, reason in entries[list_name].items()}
        lines[node.lineno - 1 : node.end_lineno] = [_list_literal(list_name, items, comments) + "\n"]
    return "".join(lines)


def _pr_description(
    bundles: dict[str, Path], exclusions: dict[str, dict[str, str]], hosted: set[str], metrics: dict[str, dict]
) -> str:
    """Pull-request text following the zoo's template (.github/pull_request_template.md): description, status,
    checklist; a box is ticked only for what the export itself checked."""
    rows = []
    for name, b in bundles.items():
        meta = json.loads((b / "configs" / "metadata.json").read_text())
        if name in NO_OWN_WEIGHTS:
            weights = "none of its own"
        elif name in hosted:
            weights = "`large_files.yml` (SHA-256)"
        else:
            weights = "not published yet"
        rows.append(f"| `{name}` | {meta['version']} | {meta['name']} | {weights} |")
    excl = [
        f"- `{lst}`: `{bundle}`: {reason}" for lst, per in sorted(exclusions.items()) for bundle, reason in per.items()
    ]
    metric_lines = [
        f"- `{name}`: " + ", ".join(f"{k} = {v}" for k, v in m.items()) for name, m in sorted(metrics.items())
    ]
    ready = all(n in hosted or n in NO_OWN_WEIGHTS for n in bundles)
    text = [
        "Fixes # .",
        "",
        "### Description",
        "Adds the four MONAI bundles of MASS (mask-guided self-supervised pretraining for 3D medical images): "
        "class-agnostic mask generation, in-context pretraining, few-shot segmentation and a frozen-encoder "
        "classification probe. Custom code ships inside each bundle as `components/`.",
        "",
        "| bundle | version | name | weights |",
        "|---|---|---|---|",
        *rows,
        "",
        "Exclusions added to `ci/bundle_custom_data.py`:" if excl else "No exclusions in `ci/bundle_custom_data.py`.",
        *excl,
        "",
    ]
    if metric_lines:
        text += ["`eval_metrics` of the provided weights (also in each `configs/metadata.json`):", *metric_lines, ""]
    else:
        text += ["No `eval_metrics`: no trained weights are provided with this pull request.", ""]
    text += [
        "### Status",
        "**Ready**" if ready else "**Work in progress** (weights not published: see the exclusions above)",
        "",
        "### Please ensure all the checkboxes:",
        "<!--- Put an `x` in all the boxes that apply, and remove the not applicable items -->",
        "- [ ] Codeformat tests passed locally by running `./runtests.sh --codeformat`.",
        "- [ ] In-line docstrings updated.",
        "- [x] Update `version` and `changelog` in `metadata.json` if changing an existing bundle.",
        "- [ ] Please ensure the naming rules in config files meet our requirements (please refer to: "
        "`CONTRIBUTING.md`).",
        "- [x] Ensure versions of packages such as `monai`, `pytorch` and `numpy` are correct in `metadata.json`.",
        f"- [{'x' if metric_lines or not hosted else ' '}] Descriptions should be consistent with the content, such "
        "as `eval_metrics` of the provided weights and TorchScript modules.",
        "- [x] Files larger than 25MB are excluded and replaced by providing download links in `large_file.yml`.",
        "- [x] Avoid using path that contains personal information within config files (such as use "
        '`/home/your_name/` for `"bundle_root"`).',
    ]
    return "\n".join(text) + "\n"


def write_zoo_pr(
    out_dir: str,
    weights: dict[str, str] | None = None,
    weights_url: str = "",
    eval_metrics: dict[str, dict] | None = None,
    zoo_repo: str = "",
    overwrite: bool = False,
    bundles_dir: str = "",
) -> dict[str, object]:
    """Write a model-zoo pull request for the four bundles into ``out_dir`` (see the module docstring).

    Args:
        out_dir: the folder to write (must not exist unless ``overwrite``).
        weights: ``{bundle: checkpoint}`` for the bundles with trained weights (not mass_maskgen).
        weights_url: folder the weights are uploaded to; ``<url>/<bundle>/model.pt`` goes into ``large_files.yml``.
        eval_metrics: ``{bundle: {metric: value}}`` of those weights, written into the bundle's ``metadata.json``.
        zoo_repo: a model-zoo checkout: its ``ci/bundle_custom_data.py`` is written with the exclusions added.
        overwrite: replace an existing ``out_dir``.
        bundles_dir: where the bundles are (default: this repository's ``bundles/``).
    """
    weights, eval_metrics = dict(weights or {}), dict(eval_metrics or {})
    unknown = sorted((set(weights) | set(eval_metrics)) - set(ZOO_BUNDLES))
    if unknown:
        raise ValueError(f"--weights/--eval_metrics: unknown bundle {unknown} (bundles: {', '.join(ZOO_BUNDLES)})")
    own = sorted(set(weights) & set(NO_OWN_WEIGHTS))
    if own:
        raise ValueError(f"--weights: {own[0]} has {NO_OWN_WEIGHTS[own[0]]}")
    unweighted = sorted(set(eval_metrics) - set(weights))
    if unweighted:
        raise ValueError(f"--eval_metrics: {unweighted} have no --weights (eval_metrics describe the provided weights)")
    if eval_metrics and not weights_url:
        raise ValueError("--eval_metrics needs --weights_url (weights that are not published cannot be evaluated)")
    out = Path(out_dir)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists (use --overwrite)")
        shutil.rmtree(out)
    bundles: dict[str, Path] = {}
    hosted: set[str] = set()
    exclusions: dict[str, dict[str, str]] = {}
    for name in ZOO_BUNDLES:
        b = out / "models" / name
        export_bundle(name, str(b), weights=weights.get(name, ""), bundles_dir=bundles_dir)
        if (b / "large_files.yml").is_file():
            (b / "large_files.yml").unlink()
        if (b / "models").is_dir():  # weights never go into the pull request: DIR/weights/<name>/ is the upload
            if weights_url:
                write_large_files(b, f"{weights_url.rstrip('/')}/{name}")  # url <weights_url>/<name>/<file>
                hosted.add(name)
            shutil.move(str(b / "models"), out / "weights" / name)
        if name in eval_metrics:
            meta_file = b / "configs" / "metadata.json"
            meta = json.loads(meta_file.read_text())
            meta["eval_metrics"] = eval_metrics[name]
            meta_file.write_text(json.dumps(meta, indent=4) + "\n")
        zoo_style(b)
        problems = _pr_file_problems(b)
        if problems:
            raise ValueError("; ".join(problems))
        for lst, reason in zoo_exclusions(b, name, name in hosted).items():
            exclusions.setdefault(lst, {})[name] = reason
        bundles[name] = b
    (out / "ci_exclusions.json").write_text(json.dumps(exclusions, indent=4) + "\n")
    patched = None
    if zoo_repo:
        src = Path(zoo_repo) / "ci" / "bundle_custom_data.py"
        if not src.is_file():
            raise FileNotFoundError(f"{src}: not found (--zoo_repo must be a model-zoo checkout)")
        patched = out / "ci" / "bundle_custom_data.py"
        patched.parent.mkdir()
        patched.write_text(patch_bundle_custom_data(src.read_text(), exclusions))
    (out / "PULL_REQUEST.md").write_text(_pr_description(bundles, exclusions, hosted, eval_metrics))
    return {
        "models": {n: str(b) for n, b in bundles.items()},
        "exclusions": exclusions,
        "hosted": sorted(hosted),
        "bundle_custom_data": str(patched) if patched else None,
    }


def main(
    name: str = "",
    out_dir: str = "",
    include_demo: bool = False,
    weights_url: str = "",
    overwrite: bool = False,
    weights: str | dict = "",
    torchscript: bool = False,
    zoo_pr: str = "",
    zoo_repo: str = "",
    eval_metrics: dict | None = None,
) -> None:
    """CLI: ``scripts/export_bundle.py NAME OUT_DIR [--weights CKPT [--torchscript]] [--weights_url URL] [--include_demo]
    [--overwrite]``, or ``scripts/export_bundle.py --zoo_pr DIR [--zoo_repo ZOO] [--weights "{'bundle': 'ckpt'}"
    --weights_url URL [--eval_metrics "{'bundle': {'metric': value}}"]] [--overwrite]``."""
    if zoo_pr:
        if name or out_dir or include_demo or torchscript:
            raise SystemExit(
                "error: --zoo_pr writes all four bundles; it takes no NAME OUT_DIR, --include_demo or --torchscript"
            )
        if weights and not isinstance(weights, dict):
            raise SystemExit("error: --weights with --zoo_pr is a dict: \"{'mass_fewshot': 'ckpt.pt', ...}\"")
        res_pr = write_zoo_pr(
            zoo_pr,
            weights=weights or None,
            weights_url=weights_url,
            eval_metrics=eval_metrics,
            zoo_repo=zoo_repo,
            overwrite=overwrite,
        )
        print(f"{zoo_pr}: models/ {', '.join(ZOO_BUNDLES)}; PULL_REQUEST.md; ci_exclusions.json")
        for lst, per in res_pr["exclusions"].items():  # type: ignore[union-attr]
            for reason in per.values():
                print(f"  {lst}: {reason}")
        if res_pr["bundle_custom_data"]:
            print(f"ci/bundle_custom_data.py with the exclusions: {res_pr['bundle_custom_data']}")
        return
    if not name or not out_dir:
        raise SystemExit("error: NAME and OUT_DIR are needed (or --zoo_pr DIR)")
    if isinstance(weights, dict):
        raise SystemExit("error: --weights of one bundle is a checkpoint path")
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
