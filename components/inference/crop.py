"""Reference cropping: the window of a reference image and its masks handed to ``encode_task``.

The window (``roi_size``) is centred on the bounding box of all mask channels (MONAI's
``generate_spatial_bounding_box``), shifted to stay inside the volume, cut with ``SpatialCrop`` and,
where the volume is smaller than the window, padded symmetrically with ``SpatialPad`` (image: its
minimum, the background of a z-scored scan; masks: 0). Used by few-shot support encoding
(:func:`crop_reference` on class masks) and the pretrain bundle's inference (:class:`CropReferenced`
on a label map).

Example::

    ref_img, ref_masks = crop_reference(image, label_map, 128, labels=[4, 43])   # [1, *roi], [2, *roi]
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.transforms import MapTransform, SpatialCrop, SpatialPad, generate_spatial_bounding_box
from monai.utils import convert_to_tensor

from components.inference.incontext import MAX_WINDOW, _triple

__all__ = ["reference_window", "crop_reference", "CropReferenced"]


def _label_channels(mask: torch.Tensor, labels: Sequence[int] | None) -> torch.Tensor:
    """``[M, D, H, W]`` bool masks from masks or a label map ``[1, D, H, W]`` and label ids."""
    if mask.dim() == 3:
        mask = mask.unsqueeze(0)
    if mask.dim() != 4:
        raise ValueError(f"reference mask must be [M, D, H, W] (or a label map [1, D, H, W]), got {tuple(mask.shape)}")
    if labels is None:
        return mask > 0
    if mask.shape[0] != 1:
        raise ValueError(f"labels=... needs a single-channel label map, got {mask.shape[0]} channels")
    return torch.stack([mask[0] == int(v) for v in labels])


def reference_window(
    mask: torch.Tensor, roi_size: int | Sequence[int], labels: Sequence[int] | None = None
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Start (inside the volume) and extent of the window centred on the foreground bounding box.

    The window is shifted to stay inside the volume; where the volume is smaller than the window the
    start is 0 and the extent is the volume size (the rest is padding). Returns ``(start, extent)``.
    """
    fg = _label_channels(convert_to_tensor(mask, track_meta=False), labels)
    roi = _triple(roi_size, "roi_size")
    empty = [i for i in range(fg.shape[0]) if not bool(fg[i].any())]
    if empty:
        raise ValueError(f"reference mask channel(s) {empty} are empty: nothing to centre the reference on")
    box_lo, box_hi = generate_spatial_bounding_box(fg, select_fn=lambda x: x > 0)  # union of channels, end exclusive
    start, extent = [], []
    for lo, hi, r, s in zip(box_lo, box_hi, roi, fg.shape[1:]):
        begin = int(math.floor((lo + hi) / 2.0 - r / 2.0 + 0.5))
        start.append(min(max(begin, 0), max(int(s) - r, 0)))
        extent.append(min(r, int(s)))
    return tuple(start), tuple(extent)  # type: ignore[return-value]


def crop_reference(
    image: torch.Tensor,
    mask: torch.Tensor,
    roi_size: int | Sequence[int] = MAX_WINDOW,
    labels: Sequence[int] | None = None,
    image_pad_value: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop ``image[1, D, H, W]`` and ``mask[M, D, H, W]`` (or a label map + ``labels``) to ``roi_size``.

    The window is centred on the bounding box of all mask channels (kept inside the volume); dims
    smaller than the window are padded symmetrically: the image with ``image_pad_value`` (default: its
    minimum), the masks with 0. Returns plain tensors ``(image_crop[1, *roi], masks[M, *roi] float {0, 1})``.
    """
    image = convert_to_tensor(image, track_meta=False)
    if image.dim() != 4:
        raise ValueError(f"reference image must be [C, D, H, W], got {tuple(image.shape)}")
    fg = _label_channels(convert_to_tensor(mask, track_meta=False), labels)
    if fg.shape[1:] != image.shape[1:]:
        raise ValueError(f"reference mask grid {tuple(fg.shape[1:])} differs from image grid {tuple(image.shape[1:])}")
    roi = _triple(roi_size, "roi_size")
    start, extent = reference_window(fg, roi)
    crop = SpatialCrop(roi_start=start, roi_end=[b + e for b, e in zip(start, extent)])
    img = crop(image)
    msk = crop(fg.to(torch.float32))
    lost = [i for i in range(msk.shape[0]) if not bool(msk[i].any())]
    if lost:
        warnings.warn(
            f"crop_reference: mask channel(s) {lost} fall outside the {roi} window around the labels", stacklevel=2
        )
    if tuple(extent) != roi:
        fill = float(image.min()) if image_pad_value is None else float(image_pad_value)
        img = SpatialPad(roi, method="symmetric", mode="constant", value=fill)(img)
        msk = SpatialPad(roi, method="symmetric", mode="constant", value=0.0)(msk)
    return convert_to_tensor(img, track_meta=False), convert_to_tensor(msk, track_meta=False)


class CropReferenced(MapTransform):
    """Reference ``image_key [1, *]`` + label map ``label_key [1, *]`` -> cropped ``ref_image`` and ``ref_masks``.

    ``labels``: label ids to use as masks (default: every non-zero id present, ascending); the ids are
    stored under ``"label_ids"``. ``ref_masks`` is ``[M, *roi]``, one channel per id.
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
