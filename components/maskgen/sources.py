"""Mask sources without SAM2: multi-scale SLIC supervoxels and existing label maps.

Every source is a dictionary transform that writes ``d["masks"]`` (list of ``SparseMask`` on the RAS grid)
and ``d["mask_provenance"]`` (one dict per mask), the same interface as the SAM2 source.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.data.utils import affine_to_spacing
from monai.transforms import Transform
from scipy import ndimage

from components.data.loading import check_label_values
from components.io.maskset import SparseMask
from components.maskgen.sam2.intensity import foreground_mask

__all__ = ["masks_from_labels", "SLICMasksd", "LabelMapMasksd"]


def masks_from_labels(lab: np.ndarray, ids: Sequence[int] | None = None) -> tuple[list[SparseMask], list[int]]:
    """One ``SparseMask`` per positive label id of an integer volume ``(X, Y, Z)``; returns (masks, ids)."""
    lab = np.asarray(lab)
    if ids is None:
        ids = [int(i) for i in np.unique(lab) if i > 0]
    out: list[SparseMask] = []
    kept: list[int] = []
    if not len(ids):
        return out, kept
    # find_objects needs consecutive ids; remap to 1..K
    remap = np.zeros(int(lab.max()) + 1, dtype=np.int32) if lab.max() > 0 else np.zeros(1, np.int32)
    for k, i in enumerate(ids, start=1):
        if 0 < i < remap.size:
            remap[i] = k
    dense = remap[np.clip(lab, 0, remap.size - 1)]
    for k, sl in enumerate(ndimage.find_objects(dense), start=1):
        if sl is None:
            continue
        crop = dense[sl] == k
        out.append(SparseMask((sl[0].start, sl[1].start, sl[2].start, sl[0].stop, sl[1].stop, sl[2].stop), crop))
        kept.append(int(ids[k - 1]))
    return out, kept


def _fill_body(fg: np.ndarray) -> np.ndarray:
    """Fill holes in 3D and slice by slice along every axis (air in lungs or bowel is inside the body)."""
    fg = ndimage.binary_fill_holes(fg)
    for ax in range(3):
        for i in range(fg.shape[ax]):
            sl: list[Any] = [slice(None)] * 3
            sl[ax] = i
            fg[tuple(sl)] = ndimage.binary_fill_holes(fg[tuple(sl)])
    return fg


class SLICMasksd(Transform):
    """Multi-scale SLIC supervoxels (scikit-image) of the image in ``image_key`` as masks.

    The image is normalised to [0, 1] by the 1st-99th percentile inside the foreground and segmented
    once per entry of ``n_segments`` (about that many supervoxels inside the foreground) with the voxel
    spacing; supervoxels are clipped to the foreground. Several counts give masks at several granularities.

    Args:
        image_key: channel-first RAS image ``(1, X, Y, Z)``.
        n_segments: target supervoxel counts, one SLIC run each.
        compactness: SLIC compactness (intensity in [0, 1]; small values follow edges more).
        foreground: foreground method of ``foreground_mask`` ("otsu", "nonzero" or a threshold).
        max_num_iter: SLIC iterations.
        sigma: Gaussian pre-smoothing (mm-aware via ``spacing``).
        max_voxels: volumes above this size are block-averaged by an integer factor before SLIC.
        split_at_foreground: split each supervoxel into its part inside the thresholded foreground and its
            part in the holes of the body (e.g. lung air), so tissue masks stop at air boundaries.
    """

    def __init__(
        self,
        image_key: str = "image",
        n_segments: Sequence[int] = (50, 200, 800),
        compactness: float = 0.1,
        foreground: str | float = "otsu",
        max_num_iter: int = 10,
        sigma: float = 0.5,
        max_voxels: int | None = 1_500_000,
        split_at_foreground: bool = True,
        masks_key: str = "masks",
        provenance_key: str = "mask_provenance",
    ) -> None:
        self.image_key, self.n_segments, self.compactness = image_key, list(n_segments), compactness
        self.foreground, self.max_num_iter, self.sigma = foreground, max_num_iter, sigma
        self.max_voxels, self.split_at_foreground = max_voxels, split_at_foreground
        self.masks_key, self.provenance_key = masks_key, provenance_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        from skimage.segmentation import slic
        from skimage.transform import downscale_local_mean

        d = dict(data)
        img_t = d[self.image_key]
        spacing = np.asarray(affine_to_spacing(img_t.affine, r=3), dtype=np.float64)
        img = np.asarray(img_t)[0].astype(np.float32)
        raw_fg = foreground_mask(img, self.foreground)
        fg = _fill_body(raw_fg.copy())
        vals = img[fg] if fg.any() else img.ravel()
        lo, hi = np.percentile(vals, [1, 99])
        norm = np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)
        # large volumes: run SLIC on a block-averaged copy, then repeat the labels back to the grid
        f = 1 if not self.max_voxels else max(1, int(np.ceil((img.size / self.max_voxels) ** (1 / 3))))
        small = downscale_local_mean(norm, (f, f, f)) if f > 1 else norm
        fg_small = downscale_local_mean(fg.astype(np.float32), (f, f, f)) > 0.5 if f > 1 else fg
        # grid seeding over the whole box (fast); scale the count so the foreground gets ~n_segments
        box_ratio = small.size / max(int(fg_small.sum()), 1)
        masks: list[SparseMask] = []
        prov: list[dict] = []
        for k in self.n_segments:
            lab = slic(
                small,
                n_segments=max(2, int(round(k * box_ratio))),
                compactness=self.compactness,
                max_num_iter=self.max_num_iter,
                sigma=self.sigma,
                spacing=spacing * f,
                channel_axis=None,
                start_label=1,
                enforce_connectivity=True,
            )
            if f > 1:
                lab = np.repeat(np.repeat(np.repeat(lab, f, 0), f, 1), f, 2)[
                    : img.shape[0], : img.shape[1], : img.shape[2]
                ]
            lab[~fg] = 0
            if self.split_at_foreground:  # tissue part and air/background part of a supervoxel apart
                lab = np.where(lab > 0, 2 * lab - raw_fg.astype(lab.dtype), 0)
            ms, ids = masks_from_labels(lab)
            masks += ms
            prov += [{"source": "slic", "n_segments": int(k), "segment": i} for i in ids]
        d[self.masks_key], d[self.provenance_key] = masks, prov
        return d


class LabelMapMasksd(Transform):
    """Masks from an integer label map in ``label_key``: one per label id, or one per connected component.

    Args:
        label_key: channel-first label map ``(1, X, Y, Z)`` on the image grid.
        connected_components: split every label into its connected components (26-connected).
        min_voxels: drop components smaller than this (only with ``connected_components``).
    """

    def __init__(
        self,
        label_key: str = "label",
        connected_components: bool = False,
        min_voxels: int = 1,
        masks_key: str = "masks",
        provenance_key: str = "mask_provenance",
    ) -> None:
        self.label_key, self.cc, self.min_voxels = label_key, connected_components, min_voxels
        self.masks_key, self.provenance_key = masks_key, provenance_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        if self.label_key not in d:
            raise KeyError(f"label map source needs '{self.label_key}' in the data (give a label for every image)")
        raw = d[self.label_key]
        check_label_values(raw, str(getattr(raw, "meta", {}).get("filename_or_obj", self.label_key)))
        lab = np.asarray(raw)[0].astype(np.int64)
        masks, ids = masks_from_labels(lab)
        prov = [{"source": "labelmap", "label": i} for i in ids]
        if self.cc:
            st = ndimage.generate_binary_structure(3, 3)
            cm, cp = [], []
            for m, p in zip(masks, prov):
                cl, n = ndimage.label(m.crop, st)
                for c, sl in enumerate(ndimage.find_objects(cl), start=1):
                    if sl is None:
                        continue
                    crop = cl[sl] == c
                    if crop.sum() < self.min_voxels:
                        continue
                    x0, y0, z0 = m.bbox[:3]
                    cm.append(
                        SparseMask(
                            (
                                x0 + sl[0].start,
                                y0 + sl[1].start,
                                z0 + sl[2].start,
                                x0 + sl[0].stop,
                                y0 + sl[1].stop,
                                z0 + sl[2].stop,
                            ),
                            crop,
                        )
                    )
                    cp.append(dict(p, component=c))
            masks, prov = cm, cp
        d[self.masks_key], d[self.provenance_key] = masks, prov
        return d
