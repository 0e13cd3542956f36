"""In-context inference of a reference image + mask onto a query volume (the pretrain bundle's inference).

* :class:`NormalizeModalityd`: the pretraining intensity normalisation as a dictionary transform.
* :class:`CropReferenced`: reference image/label map -> ``ref_image [1, *roi]`` and ``ref_masks [M, *roi]``
  (one channel per label id) in a window centred on the labels.
* :class:`ReferenceInferer`: ``inferer(query, net, ref_image, ref_masks)``: the task embedding is
  encoded once, then :class:`~components.inference.incontext.InContextInferer` slides over the query.
* :class:`ProbsToLabeld`: per-mask probabilities ``[M, *]`` -> label map ``[1, *]`` (the label id of the
  most probable mask where it is >= ``threshold``, 0 elsewhere).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from components.inference.incontext import InContextInferer, crop_reference
from components.pretrain.data import guess_modality, normalize_intensity

__all__ = ["NormalizeModalityd", "CropReferenced", "ReferenceInferer", "ProbsToLabeld", "prepare_reference_batch"]


class NormalizeModalityd(MapTransform):
    """CT clip [-991, 500] / MR-PET 2-98 percentile clip, then z-score (``modality=None``: guessed per image)."""

    def __init__(self, keys: KeysCollection, modality: str | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modality = modality

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for k in self.key_iterator(d):
            x = d[k]
            y = normalize_intensity(x, self.modality or guess_modality(x))
            d[k] = x.clone().copy_(y) if isinstance(x, torch.Tensor) and x.is_floating_point() else y
        return d


class CropReferenced(MapTransform):
    """Reference ``image_key [1, *]`` + label map ``label_key [1, *]`` -> cropped ``ref_image`` and ``ref_masks``.

    ``labels``: label ids to use as masks (default: every non-zero id present, ascending); the ids are
    stored under ``"label_ids"``.
    """

    def __init__(
        self,
        image_key: str = "ref_image",
        label_key: str = "ref_label",
        roi_size: Sequence[int] = (128, 128, 128),
        labels: Sequence[int] | None = None,
    ) -> None:
        super().__init__([image_key, label_key])
        self.image_key, self.label_key, self.roi_size, self.labels = image_key, label_key, tuple(roi_size), labels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        lab = torch.as_tensor(d[self.label_key]).round().to(torch.int64)
        ids = [int(i) for i in (self.labels or torch.unique(lab).tolist()) if int(i) > 0]
        if not ids:
            raise ValueError(
                f"{getattr(d[self.label_key], 'meta', {}).get('filename_or_obj', self.label_key)}: "
                "reference mask is empty"
            )
        img, masks = crop_reference(torch.as_tensor(d[self.image_key]).float(), lab, self.roi_size, labels=ids)
        d["ref_image"], d["ref_masks"], d["label_ids"] = img, masks, torch.tensor(ids)
        return d


def prepare_reference_batch(
    batchdata: Mapping[str, Any], device: Any = None, non_blocking: bool = False, **kwargs: Any
) -> tuple:
    """``(query image, None, (ref_image, ref_masks), {})`` for MONAI's ``SupervisedEvaluator``."""

    def mv(k: str) -> torch.Tensor:
        return torch.as_tensor(batchdata[k]).to(device=device, dtype=torch.float32, non_blocking=non_blocking)

    return batchdata["image"].to(device=device, non_blocking=non_blocking), None, (mv("ref_image"), mv("ref_masks")), {}


class ReferenceInferer(InContextInferer):
    """``InContextInferer`` that encodes the task from ``(ref_image, ref_masks)`` passed with each call."""

    def __call__(
        self,
        inputs: torch.Tensor,
        network: Any,
        ref_image: torch.Tensor | None = None,
        ref_masks: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        task = None
        if ref_image is not None and ref_masks is not None:
            task = self.encode_task(network, ref_image, ref_masks)
        return super().__call__(inputs, network, task, *args, **kwargs)


class ProbsToLabeld(MapTransform):
    """``[M, *]`` probabilities -> ``[1, *]`` label map using ``label_ids`` from the data (or 1..M)."""

    def __init__(self, keys: KeysCollection, threshold: float = 0.5, ids_key: str = "label_ids") -> None:
        super().__init__(keys)
        self.threshold, self.ids_key = float(threshold), ids_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        ids = d.get(self.ids_key)
        for k in self.key_iterator(d):
            p = d[k]
            best, arg = torch.as_tensor(p).max(dim=0, keepdim=True)
            table = torch.as_tensor(ids if ids is not None else torch.arange(1, p.shape[0] + 1)).to(arg.device)
            lab = torch.where(best >= self.threshold, table.view(-1)[arg], torch.zeros_like(arg)).to(torch.int16)
            d[k] = p[:1].clone().copy_(lab) if hasattr(p, "meta") else lab
        return d
