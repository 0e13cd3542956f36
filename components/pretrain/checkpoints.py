"""Which checkpoint a resumed pretraining run loads (through MONAI's ``CheckpointLoader``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from components.checks.errors import OptionError

__all__ = ["latest_checkpoint", "resume_checkpoint"]


logger = logging.getLogger(__name__)


def latest_checkpoint(folder: str | os.PathLike, pattern: str = "*checkpoint*.pt") -> str | None:
    """Newest file matching ``pattern`` in ``folder`` (by modification time), or None."""
    files = sorted(Path(folder).glob(pattern), key=lambda p: p.stat().st_mtime) if Path(folder).is_dir() else []
    return str(files[-1]) if files else None


def resume_checkpoint(
    ckpt_dir: str | os.PathLike, ckpt_path: str | None = None, finished: str | os.PathLike | None = None
) -> str | None:
    """The checkpoint a resumed run loads: ``ckpt_path`` if given, else the newest one of ``ckpt_dir``.

    A newest checkpoint that cannot be read (truncated by a kill, corrupt) is skipped with a warning
    naming it and the newest readable one is used. Refused (``CheckpointError`` / ``OptionError``)
    rather than starting from scratch: an unreadable ``ckpt_path``, a folder whose every checkpoint is
    broken, no checkpoint while ``finished`` (the best model) exists. With no checkpoint and no
    finished model it logs a warning and returns None (the run starts from scratch).
    """
    from components.checks.options import newest_readable_checkpoint, readable_checkpoint

    if ckpt_path:
        readable_checkpoint(ckpt_path, what="resume checkpoint")
    path = ckpt_path or newest_readable_checkpoint(ckpt_dir)
    if path is None and finished and os.path.isfile(finished):
        raise OptionError(
            "resume",
            f"no checkpoint in {ckpt_dir} to resume from, but {finished} holds a finished model; "
            "write to a new --ckpt_dir, or start again over it with --resume False --overwrite True",
        )
    if path is None:
        logger.warning(f"resume requested but no checkpoint in {ckpt_dir}; starting from scratch")
    else:
        logger.info(f"resuming from {path}")
    return path
