"""The zoo's code-format check and pre-commit hooks, the zoo's own tools (``_zoo_tools.TOOLS``), on our pull request.

``scripts/export_bundle.py --zoo_pr`` writes the four bundles under ``models/`` of a folder that gets the zoo's
``setup.cfg`` / ``pyproject.toml`` settings; the tools then run there as ``runtests.sh --codeformat`` runs them
(``isort --check``, ``black --skip-magic-trailing-comma --check``, ``flake8``, all over the folder) and as pre-commit
runs its hooks on the files a pull request adds (a git repository with every file staged). The tools come from PyPI
into a throwaway virtual environment (slow the first time; skipped when PyPI is unreachable).
"""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path

import pytest
import tomllib

from tests.zoo import _zoo_tools as zt
from tests.zoo._exports import BUNDLES, exporter


@pytest.fixture(scope="module")
def tools() -> Path:
    return zt.tools_venv()


@pytest.fixture(scope="module")
def pr(tmp_path_factory) -> Path:
    """A zoo pull request of the four bundles (no weights), inside a folder with the zoo's format settings."""
    root = tmp_path_factory.mktemp("zoo_pr") / "pr"
    checkout = zt.zoo_checkout(tmp_path_factory.mktemp("zoo"))
    exporter().write_zoo_pr(str(root), zoo_repo=str(checkout) if checkout else "")
    zt.write_zoo_config(root)
    return root


def _codeformat(tools: Path, root: Path) -> dict[str, subprocess.CompletedProcess]:
    return {
        "isort": zt.run(tools, "isort", ["--check", str(root)], root),
        "black": zt.run(tools, "black", ["--skip-magic-trailing-comma", "--check", str(root)], root),
        "flake8": zt.run(tools, "flake8", [str(root), "--count", "--statistics"], root),
    }


@pytest.mark.slow  # first run installs the tools from PyPI (~1 min), then ~20 s
def test_pull_request_passes_the_zoos_codeformat(tools: Path, pr: Path) -> None:
    for name in BUNDLES:  # every bundle ships Python of its own
        assert list((pr / "models" / name / "components").rglob("*.py")), name
    for tool, r in _codeformat(tools, pr).items():
        assert r.returncode == 0, f"{tool} on the zoo pull request {pr}:\n{(r.stdout + r.stderr)[-4000:]}"


@pytest.mark.slow
def test_pull_request_passes_the_zoos_pre_commit_hooks(tools: Path, pr: Path, tmp_path: Path) -> None:
    """Each hook gets the files pre-commit would give it (``identify`` types), in a repository where the pull
    request's files are staged (check-added-large-files looks at added files only); fixers run on a copy."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(pr, repo, ignore=shutil.ignore_patterns("setup.cfg", "pyproject.toml"))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    files = subprocess.run([*git, "diff", "--staged", "--name-only"], capture_output=True, text=True, check=True)
    added = files.stdout.split()
    assert any(f.endswith("metadata.json") for f in added) and any(f.endswith(".py") for f in added)
    tags = _tags(tools, repo, added)
    failed = {}
    for entry, args, types in zt.HOOKS:
        chosen = [f for f in added if set(types) <= tags[f]]
        if not chosen:
            continue
        r = zt.run(tools, entry, [*args, *chosen], repo)
        if r.returncode != 0:
            failed[entry] = (r.stdout + r.stderr)[-2000:]
    assert not failed, f"pre-commit hooks failing on the zoo pull request: {failed}"


def _tags(tools: Path, repo: Path, files: list[str]) -> dict[str, set[str]]:
    code = (
        "import json, sys\nfrom identify.identify import tags_from_path\n"
        "print(json.dumps({f: sorted(tags_from_path(f)) for f in sys.argv[1:]}))"
    )
    r = zt.run(tools, "python", ["-c", code, *files], repo)
    assert r.returncode == 0, r.stderr
    import json

    return {k: set(v) for k, v in json.loads(r.stdout).items()}


@pytest.mark.slow
def test_the_zoos_tools_fail_what_the_zoo_fails(tools: Path, tmp_path: Path) -> None:
    """The same runs flag code that the zoo refuses: an exploded call black joins, a ``components`` import isort
    puts with the third-party ones, an upper-case local (pep8-naming), and a JSON config at indent 2."""
    root = tmp_path / "zoo"
    pkg = root / "models" / "b" / "components"
    pkg.mkdir(parents=True)
    zt.write_zoo_config(root)
    (pkg / "__init__.py").write_text("")
    (pkg / "m.py").write_text(
        '"""m."""\n\nimport torch\n\nfrom components import x\n\n\ndef f(a, b):\n    T = torch.zeros(\n'
        "        a,\n        b,\n    )\n    return T, x\n"
    )
    res = _codeformat(tools, root)
    assert res["black"].returncode != 0 and "m.py" in res["black"].stderr
    assert res["isort"].returncode != 0 and "m.py" in res["isort"].stdout + res["isort"].stderr
    assert res["flake8"].returncode != 0 and "N806" in res["flake8"].stdout
    cfg = root / "models" / "b" / "metadata.json"
    cfg.write_text('{\n  "a": 1\n}\n')
    r = zt.run(tools, "pretty-format-json", ["--no-sort-keys", "--indent=4", str(cfg)], root)
    assert r.returncode != 0


def test_settings_are_the_zoos(tmp_path: Path) -> None:
    """``ZOO_SETTINGS`` against the zoo's own ``setup.cfg``, ``pyproject.toml`` and ``.pre-commit-config.yaml``."""
    zoo = zt.zoo_checkout(tmp_path)
    if zoo is None or not (zoo / "setup.cfg").is_file():
        pytest.skip("no model-zoo checkout ($MASS_MODEL_ZOO, /tmp/zoo or the git mirror) to compare with")
    s = zt.ZOO_SETTINGS
    cfg = configparser.ConfigParser()
    cfg.read(zoo / "setup.cfg")
    assert cfg["flake8"]["select"].strip() == s["flake8_select"]
    assert int(cfg["flake8"]["max_line_length"]) == s["line_length"]
    assert cfg["flake8"]["ignore"].split() == s["flake8_ignore"]
    assert " ".join(cfg["flake8"]["per_file_ignores"].split()) == s["flake8_per_file_ignores"]
    assert cfg["isort"]["profile"].strip() == s["isort_profile"]
    assert cfg["isort"]["known_first_party"].strip() == s["isort_known_first_party"]
    assert int(cfg["isort"]["line_length"]) == s["line_length"]
    black = tomllib.loads((zoo / "pyproject.toml").read_text())["tool"]["black"]
    assert black["line-length"] == s["line_length"] and black["target-version"] == s["black_target_versions"]
    hooks_file = zoo / ".pre-commit-config.yaml"
    if hooks_file.is_file():
        import yaml

        repo = next(r for r in yaml.safe_load(hooks_file.read_text())["repos"] if "pre-commit-hooks" in r["repo"])
        assert repo["rev"] == "v" + zt.TOOLS["pre-commit-hooks"]
        ours = {"trailing-whitespace-fixer": "trailing-whitespace"}
        assert {h["id"] for h in repo["hooks"]} - {"forbid-new-submodules"} == {
            ours.get(e, e) for e, _, _ in zt.HOOKS
        }  # forbid-new-submodules: an export has no submodule
        args = {h["id"]: h.get("args", []) for h in repo["hooks"]}
        assert args["check-added-large-files"] == [f"--maxkb={s['max_kb']}"]
        assert args["pretty-format-json"] == ["--autofix", "--no-sort-keys", f"--indent={s['json_indent']}"]
