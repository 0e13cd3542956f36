"""Two-view samples for in-context pretraining, drawn from prepared volumes (:mod:`components.pretrain.volumes`).

:class:`MaskPretrainDataset` draws, for a global sample id, a volume, an anchor inside one of its
masks, two overlapping context boxes (``crop + margin``, overlap >= ``overlap``) and up to
``max_masks`` masks present in the reference box, then the two views (:class:`TwoViewAugment`).
All randomness comes from ``(seed, sample id)``: a sample is reproducible and resuming is exact.

Sample (before collation): ``query_image``/``ref_image`` float ``[1, *crop]``, ``query_masks``/
``ref_masks`` bool ``[max_masks, *crop]`` (padded), ``valid`` bool ``[max_masks]``, plus the warp
matrices and box starts used (for checks).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from components.io.maskset import MaskSet
from components.pretrain.views import TwoViewAugment
from components.pretrain.volumes import prepare_volumes

__all__ = ["MaskPretrainDataset"]


def _box_read(arr: np.ndarray, start: np.ndarray, size: Sequence[int] | np.ndarray, fill: float) -> np.ndarray:
    """``arr[start:start+size]`` with ``fill`` outside the array (start may be negative)."""
    out = np.full(tuple(size), fill, dtype=np.float32)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.asarray(size), arr.shape)
    if np.all(hi > lo):
        o = lo - start
        out[o[0] : o[0] + hi[0] - lo[0], o[1] : o[1] + hi[1] - lo[1], o[2] : o[2] + hi[2] - lo[2]] = arr[
            lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]
        ]
    return out


def _paste(codes: np.ndarray, start: np.ndarray, bb: Sequence[int], crop: np.ndarray, bit: float) -> int:
    """Add ``bit`` where the mask (bbox ``bb``, bool ``crop``) falls inside the box at ``start``; voxel count."""
    size = np.asarray(codes.shape)
    lo = np.maximum(np.asarray(bb[:3]), start)
    hi = np.minimum(np.asarray(bb[3:]), start + size)
    if np.any(hi <= lo):
        return 0
    part = crop[lo[0] - bb[0] : hi[0] - bb[0], lo[1] - bb[1] : hi[1] - bb[1], lo[2] - bb[2] : hi[2] - bb[2]]
    d = lo - start
    codes[d[0] : d[0] + part.shape[0], d[1] : d[1] + part.shape[1], d[2] : d[2] + part.shape[2]] += part * np.float32(
        bit
    )
    return int(part.sum())


class MaskPretrainDataset(Dataset):
    """Two-view samples for in-context pretraining, indexed by a global sample id (any int >= 0).

    Args:
        data: datalist entries ``{"image", "masks", "modality"?}`` (see :func:`pair_masksets`).
        cache_dir: preprocessing cache folder.
        spacing: target spacing in mm (``None``: keep the native grid).
        crop_size: window of each view (each dim divisible by 16, <= 128 for the network).
        context_margin: extra context per dim around the window before the spatial augmentation.
        max_masks: masks per sample (M); fewer available -> padded with ``valid=False``.
        overlap: minimum overlap fraction (per axis) of the two context boxes.
        min_mask_voxels: masks smaller than this (after resampling) are never used.
        min_view_voxels: a mask is chosen only with this many voxels in the central ``crop_size`` window of
            both context boxes (before augmentation), and is valid only with this many voxels in the augmented reference view.
        augment: :class:`TwoViewAugment` or its keyword arguments.
        seed: base seed; sample ``i`` uses the generator seeded with ``(seed, i)``.
        length: ``len()`` for use without :class:`TwoViewSampler` (default: 100 per volume).
        sampling: ``"release"`` (the default, as released): ``min(max_masks, n)`` masks drawn uniformly
            without replacement from all usable masks of the volume, anchor uniform over the volume, no
            visibility check, so empty target channels occur and count; ``"visible"``: the anchor lies in
            a random mask and only masks with ``min_view_voxels`` in both views are used (fewer empty
            channels, padded channels marked invalid).
        ones_mask_prob: probability that one randomly chosen mask channel is replaced by an
            all-foreground mask in both views before augmentation (a whole-window task; release: 1).
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, Any]],
        cache_dir: str | os.PathLike,
        spacing: Sequence[float] | None = (1.5, 1.5, 1.5),
        crop_size: Sequence[int] = (128, 128, 128),
        context_margin: int = 40,
        max_masks: int = 13,
        overlap: float = 0.67,
        min_mask_voxels: int = 8,
        min_view_voxels: int = 8,
        augment: TwoViewAugment | Mapping[str, Any] | None = None,
        seed: int = 0,
        length: int | None = None,
        sampling: str = "release",
        ones_mask_prob: float = 1.0,
    ) -> None:
        if sampling not in ("release", "visible"):
            raise ValueError(f"MaskPretrainDataset: sampling must be 'release' or 'visible', got {sampling!r}")
        if not 0.0 <= float(ones_mask_prob) <= 1.0:
            raise ValueError(f"MaskPretrainDataset: ones_mask_prob must be in [0, 1], got {ones_mask_prob}")
        self.sampling, self.ones_mask_prob = sampling, float(ones_mask_prob)
        self.volumes = prepare_volumes(data, cache_dir, spacing, min_mask_voxels) if data else []
        self.crop_size = np.asarray([int(c) for c in crop_size])
        self.context = self.crop_size + int(context_margin)
        self.max_masks, self.overlap, self.seed = int(max_masks), float(overlap), int(seed)
        self.min_view_voxels = int(min_view_voxels)
        if augment is None or isinstance(augment, Mapping):
            augment = TwoViewAugment(crop_size=tuple(self.crop_size), **dict(augment or {}))
        self.augment = augment
        # no data at all (e.g. no held-out volume): an empty dataset, so a disabled validation can still be built
        self.length = int(length) if length is not None and self.volumes else 100 * len(self.volumes)
        self._open: dict[int, tuple[np.ndarray, MaskSet]] = {}

    def __len__(self) -> int:
        return self.length

    def _volume(self, v: int) -> tuple[np.ndarray, MaskSet]:
        if v not in self._open:  # opened lazily, per worker process
            info = self.volumes[v]
            self._open[v] = (np.load(info["image_npy"], mmap_mode="r"), MaskSet.open(info["masks"]))
        return self._open[v]

    def _starts(self, rng: np.random.Generator, anchor: np.ndarray, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ctx = self.context
        lo = np.where(shape >= ctx, np.maximum(anchor - ctx + 1, 0), (shape - ctx) // 2)
        hi = np.where(shape >= ctx, np.minimum(anchor, shape - ctx), (shape - ctx) // 2)
        hi = np.maximum(hi, lo)
        s1 = np.array([rng.integers(a, b + 1) for a, b in zip(lo, hi)])
        shift = ctx - np.ceil(self.overlap * ctx).astype(int)
        lo2, hi2 = np.maximum(lo, s1 - shift), np.minimum(hi, s1 + shift)
        s2 = np.array([rng.integers(a, max(a, b) + 1) for a, b in zip(lo2, hi2)])
        return s1, s2

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, int(index)])
        v = int(rng.integers(len(self.volumes)))
        info = self.volumes[v]
        image, ms = self._volume(v)
        usable = np.asarray(info["usable"])
        shape = np.asarray(image.shape)
        if self.sampling == "release":
            codes_ref, codes_qry, n, s_ref, s_qry = self._release_codes(rng, ms, usable, shape)
        else:
            codes_ref, codes_qry, n, s_ref, s_qry = self._visible_codes(rng, ms, usable, shape)
        if self.ones_mask_prob > 0 and rng.random() < self.ones_mask_prob:
            n = max(n, 1)  # nothing drawn: the whole-window task alone
            bit = float(1 << int(rng.integers(n)))
            for codes in (codes_ref, codes_qry):  # set that channel's bit everywhere
                has = np.floor(codes / bit) % 2 == 1
                codes += np.where(has, 0.0, bit).astype(np.float32)
        pad = float(info["pad_value"])
        ctx = self.context
        img_ref = torch.from_numpy(_box_read(image, s_ref, ctx, pad))[None]
        img_qry = torch.from_numpy(_box_read(image, s_qry, ctx, pad))[None]
        self.augment.set_random_state(seed=int(rng.integers(2**31 - 1)))
        out = self.augment.from_codes(
            img_ref, torch.from_numpy(codes_ref)[None], img_qry, torch.from_numpy(codes_qry)[None], n
        )
        m = self.max_masks
        valid = torch.zeros(m, dtype=torch.bool)
        if self.sampling == "release":
            valid[:n] = True  # empty channels are targets too, as released
        else:
            valid[:n] = out["ref_masks"].flatten(1).sum(1) >= self.min_view_voxels
        sample: dict[str, Any] = {
            "volume": v,
            "index": int(index),
            "valid": valid,
            "ref_box": torch.as_tensor(s_ref),
            "query_box": torch.as_tensor(s_qry),
        }
        for k in ("ref", "query"):
            masks = torch.zeros((m, *self.crop_size), dtype=torch.bool)
            masks[:n] = out[f"{k}_masks"]
            sample[f"{k}_masks"] = masks
            sample[f"{k}_image"] = out[f"{k}_image"]
            sample[f"{k}_affine"] = out[f"{k}_affine"]
        return sample

    def _release_codes(
        self, rng: np.random.Generator, ms: MaskSet, usable: np.ndarray, shape: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
        """Anchor uniform over the volume; masks uniform over all usable ones, pasted wherever they fall."""
        anchor = np.array([rng.integers(int(d)) for d in shape])
        s_ref, s_qry = self._starts(rng, anchor, shape)
        chosen = rng.choice(usable, size=min(self.max_masks, len(usable)), replace=False)
        codes_ref = np.zeros(tuple(self.context), np.float32)
        codes_qry = np.zeros(tuple(self.context), np.float32)
        for n, c in enumerate(chosen):
            bb, crop = ms.crop(int(c))
            _paste(codes_ref, s_ref, bb, crop, float(1 << n))
            _paste(codes_qry, s_qry, bb, crop, float(1 << n))
        return codes_ref, codes_qry, len(chosen), s_ref, s_qry

    def _visible_codes(
        self, rng: np.random.Generator, ms: MaskSet, usable: np.ndarray, shape: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
        """Anchor inside a random mask; masks kept only when both views show ``min_view_voxels`` of them."""
        first = int(rng.choice(usable))
        bb0, crop0 = ms.crop(first)
        pts = np.argwhere(crop0)
        anchor = pts[rng.integers(len(pts))] + np.asarray(bb0[:3])
        s_ref, s_qry = self._starts(rng, anchor, shape)

        # candidates: usable masks whose box meets both context boxes, the anchor's mask first
        boxes = ms.bboxes[usable]
        ctx = self.context
        meets = np.ones(len(usable), bool)
        for s in (s_ref, s_qry):
            meets &= np.all(boxes[:, :3] < s + ctx, 1) & np.all(boxes[:, 3:] > s, 1)
        cand = usable[meets]
        order = [first] + [int(c) for c in rng.permutation(cand) if c != first]
        codes_ref = np.zeros(tuple(ctx), np.float32)
        codes_qry = np.zeros(tuple(ctx), np.float32)
        n = 0
        lo = (ctx - self.crop_size) // 2  # the window kept from the context when the warp is the identity
        inner = tuple(slice(a, a + c) for a, c in zip(lo, self.crop_size))
        for c in order[: 4 * self.max_masks]:
            if n == self.max_masks:
                break
            bb, crop = ms.crop(c)
            tmp_r, tmp_q = np.zeros_like(codes_ref), np.zeros_like(codes_qry)
            if (
                _paste(tmp_r, s_ref, bb, crop, float(1 << n)) < self.min_view_voxels
                or np.count_nonzero(tmp_r[inner]) < self.min_view_voxels
            ):
                continue
            _paste(tmp_q, s_qry, bb, crop, float(1 << n))
            if np.count_nonzero(tmp_q[inner]) < self.min_view_voxels:  # the query must show the structure too
                continue
            codes_ref += tmp_r
            codes_qry += tmp_q
            n += 1
        return codes_ref, codes_qry, n, s_ref, s_qry
