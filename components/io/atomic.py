"""Write-then-rename helpers: a reader never sees a half-written file, a crash leaves no partial output.

Example::

    atomic_json("out/summary.json", {"done": 3})
    atomic_write("out/head.pt", lambda tmp: torch.save(state, tmp))
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "atomic_json", "default_file_mode"]


def default_file_mode() -> int:
    """Permissions a plain ``open(path, "w")`` would give: ``0o666`` less the process umask.

    ``tempfile.mkstemp`` creates files ``0o600``; finished outputs get this mode instead, like every
    other file the user writes.
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, writer: Callable[[str], Any], suffix: str = ".tmp") -> None:
    """Call ``writer(tmp_path)`` on a temp file beside ``path``, then ``os.replace`` it onto ``path``.

    ``suffix`` ends the temp name, for writers that pick the format from it (e.g. ``".tmp.nii.gz"``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_json(path: str | os.PathLike, obj: Any, indent: int = 1) -> None:
    """``obj`` as JSON at ``path`` (non-JSON values written with ``str``), atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=indent, default=str)))
