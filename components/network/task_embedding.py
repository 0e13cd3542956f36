"""TaskEmbedding: the reusable output of encoding reference image(s) + mask(s).

Holds one token tensor per task-encoding stage, deepest stage first:
``tokens[s]`` is ``[B, M, 11, C_s]`` (B references or batch items, M masks/classes, 10 query
tokens + 1 foreground token). Saved files hold only plain tensors, strings and numbers, so they
load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from components.checks.errors import InputError
from components.io.atomic import atomic_write

FORMAT = "mass-task-embedding"
VERSION = 1


class TaskEmbeddingError(InputError):
    """A task-embedding file or object is unusable; the message names the file and the problem."""


class TaskEmbedding:
    """Per-stage task tokens (deepest stage first), optionally with one name per mask."""

    def __init__(
        self, tokens: Sequence[torch.Tensor], names: Sequence[str] | None = None, meta: dict | None = None
    ) -> None:
        tokens = list(tokens)
        if not tokens or any(t.dim() != 4 for t in tokens):
            raise TaskEmbeddingError(
                f"tokens must be a non-empty list of [B, M, T, C] tensors, got {[tuple(t.shape) for t in tokens]}"
            )
        b, m = tokens[0].shape[:2]
        if any(t.shape[:2] != (b, m) for t in tokens):
            raise TaskEmbeddingError(f"stages disagree on [B, M]: {[tuple(t.shape) for t in tokens]}")
        if names is not None and len(names) != m:
            raise TaskEmbeddingError(f"{len(names)} names for {m} masks")
        self.tokens = tokens
        self.names = list(names) if names is not None else None
        self.meta = dict(meta or {})

    # -- shape -----------------------------------------------------------------------------
    @property
    def num_masks(self) -> int:
        return int(self.tokens[0].shape[1])

    @property
    def batch_size(self) -> int:
        return int(self.tokens[0].shape[0])

    @property
    def channels(self) -> list[int]:
        return [int(t.shape[-1]) for t in self.tokens]

    def __repr__(self) -> str:
        return f"TaskEmbedding(shapes={[tuple(t.shape) for t in self.tokens]}, names={self.names})"

    # -- combining -------------------------------------------------------------------------
    def mean_over_references(self) -> TaskEmbedding:
        """Token-wise mean over the B axis (K references of the same masks) -> B = 1."""
        return TaskEmbedding([t.mean(dim=0, keepdim=True) for t in self.tokens], self.names, self.meta)

    @staticmethod
    def average(embeddings: Sequence[TaskEmbedding]) -> TaskEmbedding:
        """Token-wise mean of K embeddings of the same masks (each stage averaged separately)."""
        if not embeddings:
            raise TaskEmbeddingError("cannot average an empty list of task embeddings")
        first = embeddings[0]
        for e in embeddings[1:]:
            if [tuple(t.shape) for t in e.tokens] != [tuple(t.shape) for t in first.tokens]:
                raise TaskEmbeddingError(f"cannot average {e!r} with {first!r}: shapes differ")
        tokens = [torch.stack([e.tokens[s] for e in embeddings]).mean(dim=0) for s in range(len(first.tokens))]
        return TaskEmbedding(tokens, first.names, first.meta)

    @staticmethod
    def concat(embeddings: Sequence[TaskEmbedding]) -> TaskEmbedding:
        """Join embeddings of different masks along the mask axis M."""
        names = None
        if all(e.names is not None for e in embeddings):
            names = [n for e in embeddings for n in e.names]  # type: ignore[union-attr]
        tokens = [torch.cat([e.tokens[s] for e in embeddings], dim=1) for s in range(len(embeddings[0].tokens))]
        return TaskEmbedding(tokens, names, embeddings[0].meta)

    def select(self, mask_indices: Sequence[int] | torch.Tensor) -> TaskEmbedding:
        """Keep only the given masks (in the given order)."""
        idx = torch.as_tensor(
            list(mask_indices) if not torch.is_tensor(mask_indices) else mask_indices, dtype=torch.long
        )
        names = [self.names[int(i)] for i in idx] if self.names is not None else None
        return TaskEmbedding([t[:, idx.to(t.device)] for t in self.tokens], names, self.meta)

    def expand_batch(self, batch: int) -> list[torch.Tensor]:
        """Tokens broadcast to a query batch of size ``batch`` (B must be 1 or ``batch``)."""
        if self.batch_size == batch:
            return self.tokens
        if self.batch_size != 1:
            raise TaskEmbeddingError(
                f"task embedding has B={self.batch_size}, query batch is {batch}; "
                "average references first (mean_over_references)"
            )
        return [t.expand(batch, -1, -1, -1) for t in self.tokens]

    def to(self, *args, **kwargs) -> TaskEmbedding:
        """Like ``Tensor.to`` (device and/or dtype) for every stage."""
        return TaskEmbedding([t.to(*args, **kwargs) for t in self.tokens], self.names, self.meta)

    def detach(self) -> TaskEmbedding:
        return TaskEmbedding([t.detach() for t in self.tokens], self.names, self.meta)

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write to ``path`` (temp file then rename); plain tensors + metadata only."""
        path = Path(path)
        # as_subclass drops tensor subclasses (MONAI MetaTensor) that weights_only loading refuses
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "tokens": [t.detach().cpu().contiguous().as_subclass(torch.Tensor) for t in self.tokens],
            "names": self.names,
            "meta": self.meta,
        }
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> TaskEmbedding:
        """Read a file written by :meth:`save` (``weights_only=True``)."""
        path = Path(path)
        try:
            payload = torch.load(path, map_location=map_location, weights_only=True)
        except FileNotFoundError:
            raise TaskEmbeddingError(f"{path}: no such task-embedding file") from None
        except Exception as exc:  # unpickling / zip errors: not a torch file
            raise TaskEmbeddingError(f"{path}: not a readable task-embedding file ({exc})") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise TaskEmbeddingError(f"{path}: not a task-embedding file (format tag missing)")
        if payload.get("version") != VERSION:
            raise TaskEmbeddingError(f"{path}: unsupported task-embedding version {payload.get('version')}")
        try:
            return cls(payload["tokens"], payload.get("names"), payload.get("meta"))
        except TaskEmbeddingError as exc:
            raise TaskEmbeddingError(f"{path}: {exc}") from None
