"""Mask sources without SAM2: multi-scale SLIC supervoxels and existing label maps.

Each source is an array transform (:class:`SLICMasks`, :class:`LabelMapMasks`: volume -> ``(masks,
provenance)``) with its dictionary form (:class:`SLICMasksd`, :class:`LabelMapMasksd`, ``keys`` = the
volumes read) that writes ``d["masks"]`` (list of ``SparseMask`` on the RAS grid) and
``d["mask_provenance"]`` (one dict per mask), the same interface as the SAM2 source.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data.utils import affine_to_spacing
from monai.transforms import MapTransform, Transform
from scipy import ndimage

from components.data.loading import check_label_values
from components.io.maskset import SparseMask
from components.maskgen.sam2.intensity import foreground_mask

__all__ = ["masks_from_labels", "SLICMasks", "SLICMasksd", "LabelMapMasks", "LabelMapMasksd"]


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


class SLICMasks(Transform):
    """Multi-scale SLIC supervoxels (scikit-image) of a channel-first RAS image ``(1, X, Y, Z)`` as masks:
    ``(list[SparseMask], provenance)``.

    The image is normalised to [0, 1] by the 1st-99th percentile inside the foreground and segmented
    once per entry of ``n_segments`` (about that many supervoxels inside the foreground) with the voxel
    spacing; supervoxels are clipped to the foreground. Several counts give masks at several granularities.

    Args:
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
        n_segments: Sequence[int] = (50, 200, 800),
        compactness: float = 0.1,
        foreground: str | float = "otsu",
        max_num_iter: int = 10,
        sigma: float = 0.5,
        max_voxels: int | None = 1_500_000,
        split_at_foreground: bool = True,
    ) -> None:
        self.n_segments, self.compactness = list(n_segments), compactness
        self.foreground, self.max_num_iter, self.sigma = foreground, max_num_iter, sigma
        self.max_voxels, self.split_at_foreground = max_voxels, split_at_foreground

    def __call__(self, img_t: Any) -> tuple[list[SparseMask], list[dict]]:
        from skimage.segmentation import slic
        from skimage.transform import downscale_local_mean

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
        return masks, prov


class LabelMapMasks(Transform):
    """Masks from a channel-first integer label map ``(1, X, Y, Z)``: one per label id, or one per connected
    component: ``(list[SparseMask], provenance)``.

    Args:
        connected_components: split every label into its connected components (26-connected).
        min_voxels: drop components smaller than this (only with ``connected_components``).
    """

    def __init__(self, connected_components: bool = False, min_voxels: int = 1) -> None:
        self.cc, self.min_voxels = connected_components, min_voxels

    def __call__(self, raw: Any) -> tuple[list[SparseMask], list[dict]]:
        check_label_values(raw, str(getattr(raw, "meta", {}).get("filename_or_obj", "label map")))
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
        return masks, prov


class _MaskSourced(MapTransform):
    """Dictionary form of a mask source: the masks of every key in ``keys`` (in order) go to ``masks_key``
    (a list of ``SparseMask``) and their provenance to ``provenance_key``; both replace earlier entries."""

    def __init__(
        self,
        keys: KeysCollection,
        source: Callable[[Any], tuple[list[SparseMask], list[dict]]],
        masks_key: str = "masks",
        provenance_key: str = "mask_provenance",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source, self.masks_key, self.provenance_key = source, masks_key, provenance_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        missing = [k for k in self.keys if k not in d]
        if missing and not self.allow_missing_keys:
            raise KeyError(f"{type(self).__name__} needs {missing} in the data (give it for every image)")
        masks: list[SparseMask] = []
        prov: list[dict] = []
        for key in self.key_iterator(d):
            m, p = self.source(d[key])
            masks += m
            prov += p
        d[self.masks_key], d[self.provenance_key] = masks, prov
        return d


class SLICMasksd(_MaskSourced):
    """Dictionary form of :class:`SLICMasks`: ``keys`` are the images (default ``"image"``); other arguments
    as :class:`SLICMasks`, plus ``masks_key``, ``provenance_key`` and ``allow_missing_keys``."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        masks_key: str = "masks",
        provenance_key: str = "mask_provenance",
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, SLICMasks(**kwargs), masks_key, provenance_key, allow_missing_keys)


class LabelMapMasksd(_MaskSourced):
    """Dictionary form of :class:`LabelMapMasks`: ``keys`` are the label maps (default ``"label"``); other
    arguments as :class:`LabelMapMasks`, plus ``masks_key``, ``provenance_key`` and ``allow_missing_keys``."""

    def __init__(
        self,
        keys: KeysCollection = "label",
        masks_key: str = "masks",
        provenance_key: str = "mask_provenance",
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(keys, LabelMapMasks(**kwargs), masks_key, provenance_key, allow_missing_keys)
