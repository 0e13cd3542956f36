"""Per-class masks or probabilities -> one label map (what the bundles write as ``*_seg.nii.gz``).

:func:`masks_to_labelmap` is the one conversion: voxel value ``label_ids[m]`` (default ``m + 1``)
of the mask ``m`` that covers it, 0 where no mask does; where masks overlap the most probable one
wins (or the last one without probabilities). :class:`MasksToLabelMapd` applies it to binary masks
(few-shot: after ``AsDiscreted``) or, with ``threshold``, to probabilities (pretrain inference:
foreground where the best probability is >= ``threshold``).

Example::

    lab = masks_to_labelmap(masks)                             # [M, X, Y, Z] {0,1} -> [1, X, Y, Z] in 0..M
    d = MasksToLabelMapd("pred", threshold=0.5, ids_key="label_ids")(d)   # probabilities -> label ids
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import KeepLargestConnectedComponent, MapTransform

__all__ = ["masks_to_labelmap", "MasksToLabelMapd", "keep_largest_per_mask", "LargestComponentPerMaskd"]


def masks_to_labelmap(
    masks: torch.Tensor,
    probs: torch.Tensor | None = None,
    label_ids: Sequence[int] | torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Binary masks ``[M, X, Y, Z]`` -> label map ``[1, X, Y, Z]``: ``label_ids[m]`` (default ``m + 1``) or 0.

    Where masks overlap, the mask with the highest ``probs`` wins (or the last one without ``probs``).
    ``dtype`` default: uint8 when every value fits below 255, else int16.
    """
    masks = torch.as_tensor(masks)
    on = masks > 0
    score = (
        torch.as_tensor(probs).float()
        if probs is not None
        else torch.arange(1, masks.shape[0] + 1, device=masks.device)
        .float()
        .view(-1, *([1] * (masks.dim() - 1)))
        .expand_as(masks)
    )
    score = torch.where(on, score, torch.full_like(score, -1.0))
    winner = score.argmax(0)
    table = (
        torch.arange(1, masks.shape[0] + 1, device=winner.device)
        if label_ids is None
        else torch.as_tensor(label_ids, device=winner.device).view(-1).long()
    )
    label = torch.where(on.any(0), table[winner], torch.zeros_like(winner))
    if dtype is None:
        dtype = torch.uint8 if int(table.max()) < 255 else torch.int16
    return label[None].to(dtype)


class MasksToLabelMapd(MapTransform):
    """Dictionary transform: masks (or, with ``threshold``, probabilities) ``[M, ...]`` -> label map ``[1, ...]``.

    Args:
        keys: the mask/probability entries to convert (replaced in place).
        threshold: ``None``: the input is binary masks; a number: the input is probabilities, a voxel is
            foreground where its best probability is >= ``threshold`` and takes that mask's id.
        ids_key: entry holding the label id of each channel (e.g. ``"label_ids"`` of
            :class:`~components.inference.crop.CropReferenced`); absent: ``1..M``.
        dtype: output dtype (default as :func:`masks_to_labelmap`).

    A ``MetaTensor`` input keeps its metadata and applied operations (for ``Invertd``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        threshold: float | None = None,
        ids_key: str | None = None,
        dtype: torch.dtype | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = None if threshold is None else float(threshold)
        self.ids_key, self.dtype = ids_key, dtype

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ids = d.get(self.ids_key) if self.ids_key is not None else None
        for key in self.key_iterator(d):
            x = d[key]
            t = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
            if self.threshold is None:
                lab = masks_to_labelmap(t, label_ids=ids, dtype=self.dtype)
            else:
                lab = masks_to_labelmap(t >= self.threshold, t, label_ids=ids, dtype=self.dtype)
            d[key] = (
                MetaTensor(lab, meta=dict(x.meta), applied_operations=list(x.applied_operations))
                if isinstance(x, MetaTensor)
                else lab
            )
        return d


def keep_largest_per_mask(masks: Any, connectivity: int | None = None) -> Any:
    """Binary masks ``[M, ...]`` with only the largest connected component of every channel, whatever ``M`` is.

    MONAI ``KeepLargestConnectedComponent`` (one-hot, independent channels) with ``applied_labels`` = all ``M``
    channels: MONAI's own default (``applied_labels=None``) skips channel 0, a class here. A ``MetaTensor``
    keeps its metadata (``Invertd``).
    """
    channels = list(range(int(masks.shape[0])))
    if not channels:
        return masks
    keep = KeepLargestConnectedComponent(
        applied_labels=channels, is_onehot=True, independent=True, connectivity=connectivity
    )
    return keep(masks)


class LargestComponentPerMaskd(MapTransform):
    """Dictionary :func:`keep_largest_per_mask`: an in-context task may segment any number of classes."""

    def __init__(self, keys: KeysCollection, connectivity: int | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.connectivity = connectivity

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = keep_largest_per_mask(d[key], self.connectivity)
        return d
