"""Post-processing of 3D mask proposals (paper §6.1): connected components, minimum size, redundancy removal.

Masks are ``SparseMask`` (bounding box + bool crop) so thousands of proposals fit in memory.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage

from components.io.maskset import SparseMask, bbox_of

__all__ = ["scaled_min_size", "largest_cc_touching", "mask_iou", "remove_redundant", "MaskPostprocessd"]


def scaled_min_size(min_count: float, spacing: Sequence[float], reference_spacing: Sequence[float]) -> int:
    """Convert a voxel (or pixel) count given at ``reference_spacing`` to the grid at ``spacing``.

    Example: 1000 voxels at (0.75, 0.75, 3) mm -> ~197 voxels at (1.5, 1.5, 3) mm.
    """
    ref = float(np.prod(reference_spacing))
    cur = float(np.prod(spacing))
    return max(1, int(round(min_count * ref / cur)))


def largest_cc_touching(
    sp: SparseMask, axis: int | None = None, seed: int | None = None, connectivity: int = 1
) -> SparseMask | None:
    """Keep the largest connected component of ``sp`` that intersects slice ``seed`` along ``axis``.

    Without ``axis``/``seed`` the largest component overall is kept. Returns None if nothing remains.
    ``seed`` is a full-grid slice index; ``connectivity`` as in ``scipy.ndimage.generate_binary_structure``.
    """
    lab, n = ndimage.label(sp.crop, ndimage.generate_binary_structure(3, connectivity))
    if n == 0:
        return None
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    if axis is not None and seed is not None:
        local = seed - sp.bbox[axis]
        if 0 <= local < sp.crop.shape[axis]:
            ids = np.unique(np.take(lab, local, axis=axis))
            keep = np.zeros_like(sizes)
            keep[ids] = sizes[ids]
            keep[0] = 0
            sizes = keep if keep.any() else np.zeros_like(sizes)
        else:
            return None
    if not sizes.any():
        return None
    crop = lab == int(np.argmax(sizes))
    bb = bbox_of(crop)
    assert bb is not None
    x0, y0, z0 = sp.bbox[:3]
    return SparseMask(
        (x0 + bb[0], y0 + bb[1], z0 + bb[2], x0 + bb[3], y0 + bb[4], z0 + bb[5]),
        crop[bb[0] : bb[3], bb[1] : bb[4], bb[2] : bb[5]],
    )


def _intersection(a: SparseMask, b: SparseMask) -> int:
    lo = [max(a.bbox[k], b.bbox[k]) for k in range(3)]
    hi = [min(a.bbox[k + 3], b.bbox[k + 3]) for k in range(3)]
    if any(h <= low for low, h in zip(lo, hi)):
        return 0
    sa = tuple(slice(lo[k] - a.bbox[k], hi[k] - a.bbox[k]) for k in range(3))
    sb = tuple(slice(lo[k] - b.bbox[k], hi[k] - b.bbox[k]) for k in range(3))
    return int(np.count_nonzero(a.crop[sa] & b.crop[sb]))


def mask_iou(a: SparseMask, b: SparseMask) -> float:
    """Intersection over union of two sparse masks."""
    inter = _intersection(a, b)
    union = int(a.crop.sum()) + int(b.crop.sum()) - inter
    return inter / union if union else 0.0


def remove_redundant(
    masks: Sequence[SparseMask], iou_thresh: float = 0.95, order: str = "size", seed: int = 0
) -> list[int]:
    """Greedy de-duplication: visit masks (largest first, or in random order) and keep a mask only if
    its IoU with every kept mask is below ``iou_thresh``. Returns the kept indices in visiting order.

    Pairs whose size ratio is below ``iou_thresh`` or whose boxes do not overlap are skipped without
    voxel work (their IoU cannot reach the threshold).
    """
    n = len(masks)
    if n == 0:
        return []
    sizes = np.array([int(m.crop.sum()) for m in masks], dtype=np.int64)
    boxes = np.array([m.bbox for m in masks], dtype=np.int64).reshape(n, 6)
    if order == "size":
        visit = np.argsort(-sizes, kind="stable")
    elif order == "random":
        visit = np.random.default_rng(seed).permutation(n)
    else:
        raise ValueError(f"order must be 'size' or 'random', got {order!r}")
    kept: list[int] = []
    for i in visit:
        if kept:
            k = np.asarray(kept)
            ratio = np.minimum(sizes[k], sizes[i]) / np.maximum(sizes[k], sizes[i])
            overlap = np.all(np.maximum(boxes[k, :3], boxes[i, :3]) < np.minimum(boxes[k, 3:], boxes[i, 3:]), axis=1)
            cand = k[(ratio >= iou_thresh) & overlap]
            if any(mask_iou(masks[i], masks[j]) >= iou_thresh for j in cand):
                continue
        kept.append(int(i))
    return kept


class MaskPostprocessd(MapTransform):
    """Post-process ``d[key]`` (``keys``: one key, default ``"masks"``; a list of ``SparseMask``) and
    ``d[provenance_key]`` in place of the dict.

    Steps: (1) largest connected component touching the seed slice (when the provenance has ``axis`` and
    ``seed_slice``; sources without a seed keep their largest component if ``largest_cc_all``),
    (2) minimum size ``min_voxels`` at ``reference_spacing`` scaled to the image spacing,
    (3) greedy redundancy removal at ``iou_thresh`` (paper 0.9, release 0.95).

    Args:
        keys: the key of the masks (one key: its provenance is ``d[provenance_key]``).
        image_key: key of the RAS image (its affine gives the spacing).
        min_voxels: minimum voxel count at ``reference_spacing`` (release: 1000 for abdomen CT).
        reference_spacing: spacing in mm at which ``min_voxels`` is defined.
        iou_thresh: IoU at or above which two masks count as duplicates.
        order: ``"size"`` (largest first, release) or ``"random"`` (paper).
        largest_cc_all: also reduce seedless masks (SLIC, label maps) to their largest component.
    """

    def __init__(
        self,
        keys: KeysCollection = "masks",
        image_key: str = "image",
        provenance_key: str = "mask_provenance",
        min_voxels: float = 1000,
        reference_spacing: Sequence[float] = (0.75, 0.75, 3.0),
        iou_thresh: float = 0.95,
        order: str = "size",
        largest_cc_all: bool = False,
        connectivity: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(
                f"MaskPostprocessd takes one masks key (its provenance is {provenance_key!r}), got {self.keys}"
            )
        self.masks_key = self.keys[0]
        self.image_key, self.provenance_key = image_key, provenance_key
        self.min_voxels, self.reference_spacing = min_voxels, tuple(reference_spacing)
        self.iou_thresh, self.order, self.largest_cc_all = iou_thresh, order, largest_cc_all
        self.connectivity, self.seed = connectivity, seed

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        from monai.data.utils import affine_to_spacing

        d = dict(data)
        spacing = [float(s) for s in affine_to_spacing(d[self.image_key].affine, r=3)]
        min_vox = scaled_min_size(self.min_voxels, spacing, self.reference_spacing)
        masks: list[SparseMask] = list(d[self.masks_key])
        prov: list[dict] = list(d.get(self.provenance_key) or [{} for _ in masks])
        out_m, out_p = [], []
        for m, p in zip(masks, prov):
            seeded = p.get("axis") is not None and p.get("seed_slice") is not None
            if seeded:
                m2 = largest_cc_touching(m, int(p["axis"]), int(p["seed_slice"]), self.connectivity)
            elif self.largest_cc_all:
                m2 = largest_cc_touching(m, connectivity=self.connectivity)
            else:
                m2 = m
            if m2 is None or int(m2.crop.sum()) < min_vox:
                continue
            out_m.append(m2)
            out_p.append(dict(p, voxels=int(m2.crop.sum())))
        n_before_dedup = len(out_m)
        keep = remove_redundant(out_m, self.iou_thresh, self.order, self.seed)
        d[self.masks_key] = [out_m[i] for i in keep]
        d[self.provenance_key] = [out_p[i] for i in keep]
        d["postprocess_stats"] = {
            "n_in": len(masks),
            "n_after_size": n_before_dedup,
            "n_out": len(keep),
            "min_voxels": min_vox,
        }
        return d
