"""Overlay PNG of a few slices with mask outlines, for visual QA of a mask set (matplotlib, Agg)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from components.io.maskset import MaskSet

__all__ = ["save_overlay"]


def save_overlay(
    image: np.ndarray,
    ms: MaskSet,
    path: str | os.PathLike,
    n_slices: int = 3,
    axis: int = 2,
    max_masks: int = 40,
    seed: int = 0,
) -> Path:
    """Draw ``n_slices`` evenly spaced slices along ``axis`` with up to ``max_masks`` random masks filled.

    Args:
        image: ``(1, X, Y, Z)`` or ``(X, Y, Z)`` RAS volume on the mask grid.
        ms: the mask set.
        path: output PNG (written atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = np.asarray(image)
    img = img[0] if img.ndim == 4 else img
    idx = np.linspace(0, img.shape[axis] - 1, n_slices + 2)[1:-1].astype(int)
    rng = np.random.default_rng(seed)
    chosen: Any = rng.choice(len(ms), size=min(max_masks, len(ms)), replace=False) if len(ms) else []
    colours = rng.random((len(chosen), 3))
    lo, hi = np.percentile(img, [1, 99])
    fig, axes = plt.subplots(1, n_slices, figsize=(4 * n_slices, 4))
    axes = np.atleast_1d(axes)
    label = np.zeros((n_slices, *[s for a, s in enumerate(img.shape) if a != axis], 4))
    for c, i in zip(colours, chosen):
        bb = ms.bbox(int(i))
        hit = [k for k, s in enumerate(idx) if bb[axis] <= s < bb[axis + 3]]
        if not hit:
            continue
        m = ms.get(int(i))
        for k in hit:
            sl = np.take(m, idx[k], axis=axis)
            label[k][sl] = [*c, 0.45]
    for k, ax in enumerate(axes):
        ax.imshow(np.take(img, idx[k], axis=axis).T, cmap="gray", vmin=lo, vmax=hi, origin="lower")
        ax.imshow(np.transpose(label[k], (1, 0, 2)), origin="lower")
        ax.set_title(f"axis {axis} slice {idx[k]}")
        ax.axis("off")
    fig.suptitle(f"{Path(str(ms.path)).name}: {len(ms)} masks")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=80, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, out)
    return out
