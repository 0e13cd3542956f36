"""The model zoo's own code-format tools at the zoo's versions and settings, in a throwaway virtual environment.

The zoo's ``code-format-check`` workflow (Python 3.10.14) installs ``requirements-dev.txt`` unpinned and runs
``runtests.sh --codeformat``: ``isort --check``, ``black --skip-magic-trailing-comma --check`` and ``flake8`` over the
whole repository, with the settings of its ``pyproject.toml`` (black) and ``setup.cfg`` (isort, flake8). Its
``.pre-commit-config.yaml`` runs pre-commit-hooks v4.6.0 (``pretty-format-json --indent=4``, ``check-added-large-files
--maxkb=1024`` and the rest of ``HOOKS``). ``TOOLS`` is what pip resolves for those requirements on Python 3.10 today
(2026-12-06; ``pip install --dry-run --python-version 3.10``), pinned so that a new release cannot change the verdict
unseen. ``ZOO_SETTINGS`` are the zoo's values; ``test_format.test_settings_are_the_zoos`` compares them with a zoo
checkout when one is at hand.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

TOOLS = {
    "black": "26.10.1",
    "isort": "9.0.2",
    "flake8": "7.4.1",
    "flake8-bugbear": "26.10.27",
    "flake8-comprehensions": "3.17.0",
    "flake8-executable": "2.1.3",
    "pep8-naming": "0.15.1",
    "pycodestyle": "2.15.0",
    "pyflakes": "4.0.3",
    "mccabe": "0.7.0",
    "pre-commit-hooks": "4.6.0",  # the rev in the zoo's .pre-commit-config.yaml
    "identify": "2.6.20",  # pre-commit's file typing (which files each hook gets)
}

ZOO_SETTINGS = {
    "line_length": 120,
    "black_target_versions": ["py37", "py38", "py39"],
    "flake8_select": "B,C,E,F,N,P,T4,W,B9",
    "flake8_ignore": ["E203", "E501", "E741", "W503", "W504", "C408", "N812", "B023", "B905", "B028", "B907", "C419"],
    "flake8_per_file_ignores": "__init__.py: F401, __main__.py: F401",
    "isort_profile": "black",
    "isort_known_first_party": "models",
    "json_indent": 4,
    "max_kb": 1024,
}

# pre-commit hooks of the zoo's config: (entry point, args, pre-commit file types; () = every file)
HOOKS = [
    ("end-of-file-fixer", [], ("text",)),
    ("trailing-whitespace-fixer", [], ("text",)),
    ("check-yaml", [], ("yaml",)),
    ("check-docstring-first", [], ("python",)),
    ("check-executables-have-shebangs", [], ("text", "executable")),
    ("check-toml", [], ("toml",)),
    ("check-case-conflict", [], ()),
    ("check-added-large-files", [f"--maxkb={ZOO_SETTINGS['max_kb']}"], ()),
    ("detect-private-key", [], ("text",)),
    ("pretty-format-json", ["--autofix", "--no-sort-keys", f"--indent={ZOO_SETTINGS['json_indent']}"], ("json",)),
    ("mixed-line-ending", [], ("text",)),
]

CACHE = Path(tempfile.gettempdir()) / "mass-zoo-tools"


def _pypi_reachable() -> bool:
    try:
        with urllib.request.urlopen("https://pypi.org/simple/black/", timeout=10) as r:
            return r.status == 200
    except OSError:
        return False


def tools_venv() -> Path:
    """``bin/`` of a virtual environment holding ``TOOLS`` (made once per pin set under ``CACHE``, file-locked so
    parallel sessions share it); skips the test when PyPI cannot be reached."""
    key = hashlib.sha256(repr(sorted(TOOLS.items())).encode()).hexdigest()[:12]
    venv = CACHE / f"venv-{key}"
    done = venv / "installed.ok"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"venv-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            if not _pypi_reachable():
                pytest.skip("PyPI (https://pypi.org) is unreachable: cannot install the zoo's format tools")
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
            pins = [f"{k}=={v}" for k, v in TOOLS.items()]
            r = subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins],
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert r.returncode == 0, f"pip install {' '.join(pins)} into {venv}: {r.stderr[-3000:]}"
            done.write_text("\n".join(pins) + "\n")
    return venv / "bin"


def write_zoo_config(root: Path) -> None:
    """``root/setup.cfg`` and ``root/pyproject.toml`` with ``ZOO_SETTINGS``, as the zoo's repository root has them."""
    s = ZOO_SETTINGS
    (root / "setup.cfg").write_text(
        "[flake8]\n"
        f"select = {s['flake8_select']}\n"
        f"max_line_length = {s['line_length']}\n"
        "ignore =\n"
        + "".join(f"    {c}\n" for c in s["flake8_ignore"])
        + f"per_file_ignores = {s['flake8_per_file_ignores']}\n"
        "\n[isort]\n"
        f"known_first_party = {s['isort_known_first_party']}\n"
        f"profile = {s['isort_profile']}\n"
        f"line_length = {s['line_length']}\n"
    )
    targets = ", ".join(f"'{t}'" for t in s["black_target_versions"])
    (root / "pyproject.toml").write_text(
        f"[tool.black]\nline-length = {s['line_length']}\ntarget-version = [{targets}]\ninclude = '\\.pyi?$'\n"
    )


def run(bin_dir: Path, tool: str, args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(bin_dir / tool), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def zoo_checkout(tmp: Path) -> Path | None:
    """A model-zoo checkout (``ci/``, ``models/model_info.json``, ``setup.cfg``, ``pyproject.toml``): ``$MASS_MODEL_ZOO``,
    else ``/tmp/zoo``, else the files of the git mirror's HEAD extracted into ``tmp``; None when there is none."""
    for cand in (os.environ.get("MASS_MODEL_ZOO", ""), "/tmp/zoo"):
        if cand and (Path(cand) / "ci" / "verify_bundle.py").is_file():
            return Path(cand)
    mirror = Path("/work/.mirror/Project-MONAI+model-zoo/repo")
    if not mirror.is_dir():
        return None
    out = tmp / "zoo_checkout"
    out.mkdir(parents=True, exist_ok=True)
    paths = ["ci", "models/model_info.json", "setup.cfg", "pyproject.toml", ".pre-commit-config.yaml"]
    archive = subprocess.run(["git", "-C", str(mirror), "archive", "HEAD", *paths], capture_output=True, timeout=120)
    if archive.returncode != 0:
        return None
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True, timeout=120)
    return out
