"""Slicing-axis selection and seed-slice sampling by physical interval (paper §6.1).

Array axes are those of the RAS-oriented volume ``(X, Y, Z)``; slicing along axis ``a`` gives 2D
frames made of the two other axes. The release works on SimpleITK arrays ``(Z, Y, X)`` whose first
axis is axial; its "first axis for near-isotropic images" is therefore our axis 2 (the default).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data.utils import affine_to_spacing
from monai.transforms import MapTransform

__all__ = ["select_slice_axis", "seed_slices", "SeedSlicesd"]


def select_slice_axis(spacing: Sequence[float], isotropic_ratio: float = 1.3, default_axis: int = 2) -> int:
    """Axis whose slices have the finest mean in-plane spacing; ``default_axis`` if max/min spacing < ratio.

    Example: spacing (0.7, 0.7, 5.0) -> 2 (axial slices); (1, 1, 1) -> ``default_axis``.
    """
    sp = np.asarray(spacing, dtype=float)
    if sp.max() / sp.min() < isotropic_ratio:
        return int(default_axis)
    inplane = [np.mean([sp[j] for j in range(3) if j != a]) for a in range(3)]
    return int(np.argmin(inplane))


def seed_slices(
    n: int,
    axis_spacing: float,
    interval_mm: float = 15.0,
    min_seeds: int = 10,
    extent: tuple[int, int] | None = None,
) -> list[int]:
    """Seed-slice indices along one axis.

    Args:
        n: number of slices along the axis.
        axis_spacing: slice spacing in mm.
        interval_mm: physical distance between seeds; step = max(1, round(interval_mm / axis_spacing)).
        min_seeds: at least this many seeds (evenly spaced) when the interval gives fewer (capped at the extent).
        extent: ``(first, last+1)`` slice range to sample (e.g. the foreground extent); default all slices.

    Returns:
        sorted unique slice indices, centred within the extent.
    """
    lo, hi = extent if extent is not None else (0, n)
    lo, hi = max(0, int(lo)), min(n, int(hi))
    if hi <= lo:
        return []
    length = hi - lo
    step = max(1, int(round(interval_mm / float(axis_spacing))))
    count = (length - 1) // step + 1
    start = lo + ((length - 1) - (count - 1) * step) // 2
    seeds = list(range(start, hi, step))[:count]
    if len(seeds) < min(min_seeds, length):
        seeds = np.unique(np.round(np.linspace(lo, hi - 1, min(min_seeds, length) + 2)[1:-1]).astype(int)).tolist()
        if len(seeds) < min(min_seeds, length):
            seeds = list(range(lo, hi))[: min(min_seeds, length)]
    return [int(s) for s in seeds]


def _extent(fg: np.ndarray, axis: int) -> tuple[int, int]:
    other = tuple(a for a in range(3) if a != axis)
    nz = np.flatnonzero(fg.any(axis=other))
    return (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, fg.shape[axis])


class SeedSlicesd(MapTransform):
    """Add a slice plan ``d[plan_key] = [{"axis", "seeds", "spacing"}]`` for the image in ``keys``.

    Args:
        keys: the (channel-first, RAS) image whose affine gives the spacing.
        interval_mm: seed interval in mm (paper 15, release 30).
        min_seeds: minimum number of seeds per axis (release 10).
        multi_axis: plan all three axes instead of the selected one.
        isotropic_ratio / default_axis: see ``select_slice_axis``.
        foreground_key: optional key of a bool foreground volume; seeds are restricted to its extent.
        foreground: or compute the foreground from the image itself (``"otsu"``, ``"nonzero"`` or a
            threshold, see ``components.maskgen.sam2.intensity.foreground_mask``); None: all slices.
    """

    def __init__(
        self,
        keys: KeysCollection,
        plan_key: str = "slice_plan",
        interval_mm: float = 15.0,
        min_seeds: int = 10,
        multi_axis: bool = False,
        isotropic_ratio: float = 1.3,
        default_axis: int = 2,
        foreground_key: str | None = None,
        foreground: str | float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.plan_key = plan_key
        self.interval_mm, self.min_seeds, self.multi_axis = interval_mm, min_seeds, multi_axis
        self.isotropic_ratio, self.default_axis = isotropic_ratio, default_axis
        self.foreground_key, self.foreground = foreground_key, foreground

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d: dict[Hashable, Any] = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            spacing = [float(s) for s in affine_to_spacing(img.affine, r=3)]
            shape = tuple(img.shape[-3:])
            axes = (
                [0, 1, 2] if self.multi_axis else [select_slice_axis(spacing, self.isotropic_ratio, self.default_axis)]
            )
            fg = None
            if self.foreground_key is not None and self.foreground_key in d:
                fg = np.asarray(d[self.foreground_key]).reshape(shape).astype(bool)
            elif self.foreground is not None:
                from components.maskgen.sam2.intensity import foreground_mask

                fg = foreground_mask(np.asarray(img)[0], self.foreground)
            plan = []
            for a in axes:
                ext = _extent(fg, a) if fg is not None else None
                seeds = seed_slices(shape[a], spacing[a], self.interval_mm, self.min_seeds, ext)
                plan.append({"axis": a, "seeds": seeds, "spacing": spacing})
            d[self.plan_key] = plan
        return d
