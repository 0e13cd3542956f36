"""In-context inference of a reference image + mask onto a query volume (the pretrain bundle's inference).

* :class:`ReferenceInferer`: ``inferer(query, net, ref_image, ref_masks)``: the task embedding is
  encoded once, then :class:`~components.inference.incontext.InContextInferer` slides over the query.
* :func:`prepare_reference_batch`: the evaluator's batch -> ``(query, None, (ref_image, ref_masks), {})``.

The bundle's other steps live with their concept: intensity normalisation
(:class:`components.data.intensity.ModalityNormalized`), reference cropping
(:class:`components.inference.crop.CropReferenced`) and probabilities -> label map
(:class:`components.inference.labels.MasksToLabelMapd` with ``threshold``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from components.inference.incontext import InContextInferer

__all__ = ["ReferenceInferer", "prepare_reference_batch"]


def prepare_reference_batch(
    batchdata: Mapping[str, Any], device: Any = None, non_blocking: bool = False, **kwargs: Any
) -> tuple:
    """``(query image, None, (ref_image, ref_masks), {})`` for MONAI's ``SupervisedEvaluator``."""

    def mv(k: str) -> torch.Tensor:
        return torch.as_tensor(batchdata[k]).to(device=device, dtype=torch.float32, non_blocking=non_blocking)

    return batchdata["image"].to(device=device, non_blocking=non_blocking), None, (mv("ref_image"), mv("ref_masks")), {}


class ReferenceInferer(InContextInferer):
    """``InContextInferer`` that encodes the task from ``(ref_image, ref_masks)`` passed with each call."""

    def __call__(  # type: ignore[override]  # the task comes as (ref_image, ref_masks), not as an embedding
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
