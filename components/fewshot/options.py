"""The mass_fewshot bundle's inference options, checked before any volume is read (config ``initialize``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from components.checks.errors import OptionError
from components.checks.options import check_weights_fit

__all__ = ["check_inference_options"]


def check_inference_options(
    datalist: Sequence[Any], dataset_dir: str, image_pattern: str, ckpt_path: str, network: Any
) -> bool:
    """Something to segment (an empty folder exited 0 having written nothing) and weights that fit ``network``."""
    if not datalist:
        raise OptionError("dataset_dir", f"{dataset_dir}: no image matches {image_pattern!r}")
    check_weights_fit("ckpt_path", ckpt_path, network)
    return True
