"""Fault-injection harness: run a command line of ours in-process, as a user would from a bundle
folder, and read back the exit status, the ``error:`` lines and the hashes of finished outputs."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import monai.bundle.scripts  # noqa: F401 - its logger keeps the stdout of its first import: not a test's capture
import numpy as np
import torch

from components.io.maskset import write_maskset
from tests._bundles import REPO

DEMO = REPO / "data" / "demo"


@dataclass
class Outcome:
    code: int
    stderr: str

    @property
    def errors(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.startswith("error: ")]


def run_bundle(capsys, monkeypatch, bundle: str, config: str, *options: str) -> Outcome:
    """``python -m components.run run --config_file configs/<config> <options>`` from inside the bundle."""
    from components.run import main

    monkeypatch.chdir(REPO / "bundles" / bundle)
    buf = io.StringIO()
    _KEEP.append(buf)  # log handlers set up during the run keep writing here, never to a closed stream
    with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
        code = main(["run", "--config_file", f"configs/{config}", *options])
    return Outcome(code, buf.getvalue())


_KEEP: list[io.StringIO] = []


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> hex digest)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def unchanged(before: dict[str, str], root: Path) -> list[str]:
    """Files of ``before`` that changed or vanished under ``root``."""
    after = tree_hashes(root)
    return [k for k, v in before.items() if after.get(k) != v]


def finished_outputs(root: Path) -> Path:
    """A folder holding what earlier runs finished: a best model, checkpoints, mask sets, results."""
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "eval" / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.arange(4.0)}}, root / "models" / "model.pt")
    torch.save({"model": {"w": torch.ones(4)}}, root / "eval" / "checkpoints" / "checkpoint_epoch=1.pt")
    m = np.zeros((8, 8, 8), bool)
    m[2:5, 2:5, 2:5] = True
    write_maskset(root / "masks" / "done.mset", [m], np.eye(4), image_path=str(DEMO / "colin27_t1.nii.gz"))
    (root / "result.json").write_text('{"dice_mean": 0.5}')
    return root


def truncated(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


class _Pickled:  # a checkpoint holding a Python object: refused by weights_only=True
    pass


def pickled_checkpoint(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.ones(2)}, "obj": _Pickled()}, path)
    return path


def not_a_dir(root: Path) -> str:
    """A folder path that cannot be created (a file sits where a parent folder should be); works as root."""
    blocker = root / "blocker"
    blocker.write_text("x")
    return os.fspath(blocker / "out")
