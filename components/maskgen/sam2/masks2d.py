"""2D automatic masks on seed slices with sam2's ``SAM2AutomaticMaskGenerator`` (paper §6.1)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from components.maskgen.sam2.model import image_feature_sizes

__all__ = ["RELEASE_AMG_PARAMS", "make_mask_generator", "auto_masks_2d"]

#: Release defaults of the automatic mask generator (GUIDE §2).
RELEASE_AMG_PARAMS: dict[str, Any] = {
    "points_per_side": 32,
    "points_per_batch": 128,
    "pred_iou_thresh": 0.4,
    "stability_score_thresh": 0.7,
    "box_nms_thresh": 0.5,
    "crop_n_layers": 2,
    "crop_nms_thresh": 0.5,
    "crop_n_points_downscale_factor": 1,
    "multimask_output": True,
    "use_m2m": False,
}


def make_mask_generator(model: Any, params: Mapping[str, Any] | None = None) -> Any:
    """``SAM2AutomaticMaskGenerator`` for ``model`` with ``RELEASE_AMG_PARAMS`` updated by ``params``."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    kw = dict(RELEASE_AMG_PARAMS)
    kw.update(params or {})
    gen = SAM2AutomaticMaskGenerator(model, **kw)
    # the image predictor hard-codes the backbone sizes of a 1024 model
    gen.predictor._bb_feat_sizes = image_feature_sizes(int(model.image_size))
    return gen


def auto_masks_2d(generator: Any, rgb: np.ndarray, min_area: int = 0, max_masks: int = 70) -> list[dict]:
    """Masks of one slice, best ``predicted_iou`` first.

    Args:
        generator: from ``make_mask_generator``.
        rgb: uint8 ``(H, W, 3)`` slice.
        min_area: drop masks with fewer pixels.
        max_masks: keep at most this many (release: 70).

    Returns:
        dicts with ``segmentation`` (bool ``(H, W)``), ``area``, ``predicted_iou``, ``stability_score``.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    out = [m for m in generator.generate(rgb) if int(m["area"]) >= max(1, min_area)]
    out.sort(key=lambda m: (-float(m["predicted_iou"]), -int(m["area"])))
    return out[:max_masks]
