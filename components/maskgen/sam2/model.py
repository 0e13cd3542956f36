"""Build the SAM2 model used for both 2D automatic masks and video propagation.

One ``SAM2VideoPredictor`` (a ``SAM2Base``) serves ``SAM2AutomaticMaskGenerator`` and propagation, so the
weights are loaded once. ``image_size`` other than 1024 is supported for cheap tests and benchmarks: the
hydra overrides below set the model size and the matching RoPE feature sizes of the memory attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["size_overrides", "build_sam2_predictor", "autocast_ctx", "image_feature_sizes"]


def size_overrides(image_size: int) -> list[str]:
    """Hydra overrides for a model running at ``image_size`` (a multiple of 32)."""
    if image_size % 32:
        raise ValueError(f"SAM2 image_size must be a multiple of 32, got {image_size}")
    f = image_size // 16
    return [
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{f},{f}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{f},{f}]",
    ]


def image_feature_sizes(image_size: int) -> list[tuple[int, int]]:
    """Backbone feature sizes the image predictor expects (1024 -> 256, 128, 64)."""
    return [(image_size // 4,) * 2, (image_size // 8,) * 2, (image_size // 16,) * 2]  # type: ignore[list-item]


def build_sam2_predictor(
    config: str = "configs/sam2.1/sam2.1_hiera_l.yaml",
    checkpoint: str | None = None,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    extra_overrides: Sequence[str] = (),
    seed: int = 0,
) -> Any:
    """A ``sam2.sam2_video_predictor.SAM2VideoPredictor`` in eval mode.

    Args:
        config: sam2 config name, e.g. ``configs/sam2.1/sam2.1_hiera_t.yaml``.
        checkpoint: a SAM2 ``.pt`` checkpoint (``{"model": state_dict}``, loaded with ``weights_only=True``
            by sam2); None gives random weights (tests and benchmarks only).
        device: torch device.
        image_size: model input size; None keeps the config's (1024).
        extra_overrides: more hydra overrides.
        seed: torch seed for the random initialisation when ``checkpoint`` is None.
    """
    from sam2.build_sam import build_sam2_video_predictor

    if checkpoint is not None:  # named, tensor-only, before the model is built (never weights_only=False)
        from components.checks.options import readable_checkpoint

        readable_checkpoint(checkpoint, what="SAM2 checkpoint")
    overrides = list(size_overrides(image_size) if image_size else []) + list(extra_overrides)
    if checkpoint is None:
        torch.manual_seed(seed)
    try:
        return build_sam2_video_predictor(config, checkpoint, device=str(device), hydra_overrides_extra=overrides)
    except Exception as e:
        if "MissingConfigException" in type(e).__name__ or "Cannot find primary config" in str(e):
            raise ValueError(
                f"{config}: unknown SAM2 config (use a sam2 package config name such as "
                "'configs/sam2.1/sam2.1_hiera_l.yaml')"
            ) from e
        raise


def autocast_ctx(device: str | torch.device, enabled: bool = True) -> Any:
    """bf16 autocast on the device type (SAM2 keeps memory features in bf16; CPU needs it too)."""
    dev = torch.device(device)
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=enabled)
