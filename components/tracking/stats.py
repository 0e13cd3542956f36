"""Summaries of a metric over seeds, as the sweep reports print them: mean, sample std (ddof=1), n."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

__all__ = ["mean_std", "cell"]


def mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    """``(mean, sample std (ddof=1, as pandas), n)`` of the finite values; std is NaN for one value."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return float("nan"), float("nan"), 0
    std = float(np.std(vals, ddof=1)) if len(vals) > 1 else float("nan")
    return float(np.mean(vals)), std, len(vals)


def cell(stat: tuple[float, float, int] | None, scale: float, n_all: int, digits: int = 1) -> str:
    """``"mean ± std"`` (scaled), ``"(n=k)"`` added when fewer than ``n_all`` values; one value: no ±."""
    if stat is None or stat[2] == 0:
        return "–"
    mean, std, n = stat
    if n == 1:
        return f"{mean * scale:.{digits}f} (n=1)"
    text = f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"
    return text if n >= n_all else f"{text} (n={n})"
