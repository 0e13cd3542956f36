"""What identifies a sweep run's result: digests of its settings and files, and the code that made it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

__all__ = ["digest", "file_sha256", "bundle_version", "git_commit", "code_tags"]


def digest(obj: Any) -> str:
    """SHA-256 (16 hex digits) of ``obj`` as sorted JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_sha256(path: str | os.PathLike, digits: int = 16) -> str:
    """SHA-256 (the first ``digits`` hex digits; 64: all) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:digits]


def bundle_version(bundle_dir: str | os.PathLike) -> str:
    """``version`` of the bundle's ``configs/metadata.json``; ``"unknown"`` if it cannot be read."""
    try:
        return str(json.loads((Path(bundle_dir) / "configs" / "metadata.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def git_commit() -> str:
    """The commit of the code running (``git rev-parse HEAD`` here); ``"unknown"`` outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def code_tags(bundle_dir: str | os.PathLike) -> dict[str, str]:
    """``{"bundle_version", "git_commit"}``: computed once per sweep, tagged on each of its runs."""
    return {"bundle_version": bundle_version(bundle_dir), "git_commit": git_commit()}
