"""Training handlers of the pretraining trainer: the best-metric tracker kept in full-state checkpoints, an
atomic fixed-name saver for ``models/model.pt``, and the per-batch sample-id log (a multi-process check).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.handlers.checkpoint import BaseSaveHandler

__all__ = ["holds_key", "BestMetricState", "AtomicFixedSaver", "SampleLog"]


logger = logging.getLogger(__name__)


class BestMetricState:
    """``state_dict`` / ``load_state_dict`` of a key-metric ``CheckpointSaver``'s tracker (Ignite
    ``Checkpoint._saved``: the ``(score, filename)`` of the best model so far), for full-state checkpoints."""

    KEY = "best_metric"

    def __init__(self, saver: Any) -> None:
        self.saver = saver
        ck = self._checkpoint()
        fixed = getattr(getattr(ck, "save_handler", None), "filename", None)
        if ck is not None and fixed:  # e.g. models/model.pt: replaced atomically, never deleted first
            ck.save_handler = AtomicFixedSaver(ck.save_handler.dirname, fixed)

    def _checkpoint(self) -> Any:
        return getattr(self.saver, "_key_metric_checkpoint", None)

    def state_dict(self) -> dict[str, Any]:
        ck = self._checkpoint()
        saved = [] if ck is None else [[float(p), str(f)] for p, f in ck.state_dict()["_saved"]]
        return {"saved": saved}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        ck = self._checkpoint()
        if ck is not None:
            ck.load_state_dict({"_saved": [(float(p), str(f)) for p, f in state.get("saved", [])]})
            logger.info(f"best-metric tracker restored: {ck.state_dict()['_saved']}")


class AtomicFixedSaver(BaseSaveHandler):
    """Ignite save handler for a fixed file name (``model.pt``): each save writes a temp file and renames
    it over the old one, and ``remove`` does nothing. Ignite's ``Checkpoint`` removes the previous best
    before saving the new one; with MONAI's non-atomic ``DiskSaver`` a kill between the two left no
    ``model.pt`` at all, and one during the write a truncated one."""

    def __init__(self, dirname: str | os.PathLike, filename: str) -> None:
        self.dirname, self.filename = Path(dirname), filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        from components.io.atomic import atomic_write

        atomic_write(self.dirname / self.filename, lambda tmp: torch.save(checkpoint, tmp))

    def remove(self, filename: str) -> None:
        """Nothing to remove: the next save replaces the file in one rename."""


def holds_key(loader: Any, key: str) -> bool:
    """Whether the checkpoint a ``CheckpointLoader`` will load has ``key`` (False if it cannot be read now)."""
    path = getattr(loader, "load_path", None)
    if not path or not os.path.isfile(path):
        return False
    try:
        return key in torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False


class SampleLog:
    """Append the sample ids of every training batch to ``path`` (``{rank}`` is filled in); no-op if ``path`` is empty.

    A diagnostic for multi-process runs: each rank should see different ids.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def attach(self, engine: Any) -> None:
        if not self.path:
            return
        import torch.distributed as dist
        from ignite.engine import Events

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        path = Path(str(self.path).format(rank=rank))
        path.parent.mkdir(parents=True, exist_ok=True)

        def _log(e: Any) -> None:
            ids = e.state.batch["index"] if isinstance(e.state.batch, Mapping) else [b["index"] for b in e.state.batch]
            with open(path, "a") as f:
                f.write(" ".join(str(int(i)) for i in torch.as_tensor(ids).view(-1).tolist()) + "\n")

        engine.add_event_handler(Events.ITERATION_STARTED, _log)
