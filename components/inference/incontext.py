"""Sliding-window inference on volumes of any size, one definition for every MASS segmenter.

* :class:`VolumeInferer` — a MONAI ``Inferer`` for fixed-class networks (``net(window) -> logits``):
  MONAI's ``SlidingWindowInferer`` with the MASS conventions (window shrunk to small volumes, padding
  with the volume's minimum, sigmoid per window then Gaussian blending, overlap 0.5). The few-shot
  sweep, ``evaluate.json``, ``inference.json``, validation in ``train.json``, MONAI Label and the
  Deploy app all use it, so a deployed model gives exactly the numbers the evaluation reported.
* :class:`InContextInferer` — the same, running ``net.segment(window, task)``; the task embedding is
  computed once and shared by every window.
* :func:`binarize` — threshold (MONAI ``AsDiscrete``) and optional largest connected component per
  mask channel (MONAI ``KeepLargestConnectedComponent``).

Reference cropping is :mod:`components.inference.crop`; masks -> label maps :mod:`components.inference.labels`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from monai.inferers import Inferer, SlidingWindowInferer
from monai.transforms import AsDiscrete
from monai.utils import convert_to_tensor

from components.inference.labels import keep_largest_per_mask

__all__ = ["VolumeInferer", "InContextInferer", "binarize", "fit_roi", "segment_in_chunks", "MAX_CLASSES_PER_PASS"]

# classes segmented together in one decoder pass, as the release evaluates (``max_classes_per_batch``)
MAX_CLASSES_PER_PASS = 8

DIVISOR = 16  # every window dim must be a multiple of this (4 poolings)
MAX_WINDOW = 128  # size of the learnable positional embedding


def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    out = (int(value),) * 3 if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != 3 or min(out) <= 0:
        raise ValueError(f"{name} must be a positive int or 3 positive ints, got {value!r}")
    return out  # type: ignore[return-value]


def fit_roi(
    spatial_size: Sequence[int], roi_size: int | Sequence[int] = MAX_WINDOW, divisor: int = DIVISOR
) -> tuple[int, int, int]:
    """Window per dim: ``min(roi, spatial rounded up to a multiple of divisor)``, at least ``2 * divisor``.

    A 70-voxel dim with a 128 window gives 80 (padded by 10) instead of 128 (padded by 58). The floor
    of 32 keeps the deepest feature map larger than one voxel (instance norm needs two).
    """
    roi = _triple(roi_size, "roi_size")
    if any(r % divisor for r in roi):
        raise ValueError(f"roi_size {roi} must be a multiple of {divisor} in every dim")
    fitted = (
        max(min(r, 2 * divisor), min(r, divisor * math.ceil(int(s) / divisor))) for r, s in zip(roi, spatial_size)
    )
    return tuple(fitted)  # type: ignore[return-value]


def segment_in_chunks(
    segment: Callable[..., torch.Tensor],
    window: torch.Tensor,
    task: Any,
    max_classes_per_pass: int | None = MAX_CLASSES_PER_PASS,
) -> torch.Tensor:
    """``segment(window, task)`` with at most ``max_classes_per_pass`` masks decoded together -> [B, M, ...].

    The decoder's tokens of all masks attend to each other and share one feature map, so a pass over
    many classes is not the same as several small passes; the release segments at most 8 classes per
    pass. Task encoding is per mask already, so chunking only the decoding reproduces it. ``None`` or
    0: every mask in one pass.
    """
    n = getattr(task, "num_masks", None)
    k = int(max_classes_per_pass or 0)
    if n is None or k <= 0 or n <= k:
        return segment(window, task)
    return torch.cat([segment(window, task.select(range(i, min(i + k, n)))) for i in range(0, n, k)], dim=1)


class VolumeInferer(Inferer):
    """Sliding-window segmentation of a whole volume by a fixed-class network.

    Args:
        roi_size: window size, each dim a multiple of 16 and <= the network's ``max_window``.
        overlap: window overlap (0.5 as the release).
        mode: blending, ``"gaussian"`` (release) or ``"constant"``.
        sigma_scale: Gaussian sigma as a fraction of the window (MONAI default).
        sw_batch_size: windows per network call.
        output: ``"probabilities"`` (sigmoid per window, then blended, as the release) or ``"logits"``.
        padding_value: fill for volumes smaller than the window; ``None`` uses the query's minimum
            (background of a z-scored scan rather than mid-grey 0, which MONAI's inferer would use).
        shrink_roi: shrink the window to the volume (rounded up to 16) where the volume is smaller.
        sw_device / device: as MONAI ``SlidingWindowInferer`` (window compute / output device).

    Call: ``inferer(image[B, 1, D, H, W], net) -> [B, M, D, H, W]`` (float32), ``net(window) -> logits``
    (an ``nn.Module``, a TorchScript module or any callable).
    """

    def __init__(
        self,
        roi_size: int | Sequence[int] = MAX_WINDOW,
        overlap: float = 0.5,
        mode: str = "gaussian",
        sigma_scale: float = 0.125,
        sw_batch_size: int = 1,
        output: str = "probabilities",
        padding_value: float | None = None,
        shrink_roi: bool = True,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.roi_size = _triple(roi_size, "roi_size")
        if any(r % DIVISOR for r in self.roi_size):
            raise ValueError(f"roi_size {self.roi_size} must be a multiple of {DIVISOR} in every dim")
        if output not in ("probabilities", "logits"):
            raise ValueError(f"output must be 'probabilities' or 'logits', got {output!r}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        self.overlap = overlap
        self.mode = mode
        self.sigma_scale = sigma_scale
        self.sw_batch_size = sw_batch_size
        self.output = output
        self.padding_value = padding_value
        self.shrink_roi = shrink_roi
        self.sw_device = sw_device
        self.device = device
        self.progress = progress

    def window_for(self, spatial_size: Sequence[int], network: Any = None) -> tuple[int, int, int]:
        """The window used for a query grid (clipped to ``network.max_window`` when it has one)."""
        roi = self.roi_size
        max_window = getattr(network, "max_window", None)
        if isinstance(max_window, int) and max(roi) > max_window:
            raise ValueError(f"roi_size {roi} exceeds the network's max_window {max_window}")
        return fit_roi(spatial_size, roi) if self.shrink_roi else roi

    def slide(
        self, inputs: torch.Tensor, window_fn: Callable[[torch.Tensor], torch.Tensor], network: Any
    ) -> torch.Tensor:
        """Run ``window_fn(window) -> logits`` over ``inputs[B, C, D, H, W]`` with the settings above."""
        if inputs.dim() != 5:
            raise ValueError(f"image must be [B, C, D, H, W], got shape {tuple(inputs.shape)}")
        want_probs = self.output == "probabilities"

        def predictor(window: torch.Tensor) -> torch.Tensor:
            logits = window_fn(window)
            return torch.sigmoid(logits.float()) if want_probs else logits.float()

        cval = float(inputs.min()) if self.padding_value is None else float(self.padding_value)
        sliding = SlidingWindowInferer(
            roi_size=self.window_for(inputs.shape[2:], network),
            sw_batch_size=self.sw_batch_size,
            overlap=self.overlap,
            mode=self.mode,
            sigma_scale=self.sigma_scale,
            padding_mode="constant",
            cval=cval,
            sw_device=self.sw_device,
            device=self.device,
            progress=self.progress,
        )
        return cast(torch.Tensor, sliding(inputs.float(), predictor))  # one tensor out: the predictor returns one

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        """image[B, 1, D, H, W] -> probabilities or logits [B, M, D, H, W] on the full image grid."""
        return self.slide(inputs, lambda window: network(window, *args, **kwargs), network)


class InContextInferer(VolumeInferer):
    """Sliding-window in-context segmentation of a query volume (:class:`VolumeInferer` settings).

    Extra argument ``task``: default TaskEmbedding used when ``__call__`` gets none (lets a MONAI
    evaluator call ``inferer(inputs, network)``). ``max_classes_per_pass`` (default 8, as the release):
    masks decoded together in one pass (:func:`segment_in_chunks`).

    Call: ``inferer(query[B, 1, D, H, W], net, task) -> [B, M, D, H, W]`` (float32) where ``net`` has
    ``segment(window, task)`` or is a callable ``f(window, task)``.

    Example::

        inferer = InContextInferer(roi_size=128)
        task = net.encode_task(ref_image, ref_masks)        # once
        probs = inferer(query, net, task)                   # any query size
        masks = binarize(probs, largest_component=True)
    """

    def __init__(
        self,
        roi_size: int | Sequence[int] = MAX_WINDOW,
        *args: Any,
        task: Any = None,
        max_classes_per_pass: int | None = MAX_CLASSES_PER_PASS,
        **kwargs: Any,
    ) -> None:
        super().__init__(roi_size, *args, **kwargs)
        self.task = task
        self.max_classes_per_pass = max_classes_per_pass

    @staticmethod
    def encode_task(network: Any, ref_image: torch.Tensor, ref_masks: torch.Tensor) -> Any:
        """``network.encode_task`` without gradients (reference already cropped to a valid window)."""
        with torch.no_grad():
            return network.encode_task(ref_image, ref_masks)

    def __call__(self, inputs: torch.Tensor, network: Any, task: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        """query[B, 1, D, H, W] -> probabilities or logits [B, M, D, H, W] on the full query grid."""
        task = self.task if task is None else task
        if task is None:
            raise ValueError("InContextInferer needs a task embedding: pass task=... or set inferer.task")
        segment: Callable[[torch.Tensor, Any], torch.Tensor] = getattr(network, "segment", network)
        window_device = torch.device(self.sw_device) if self.sw_device is not None else inputs.device
        if hasattr(task, "to"):
            task = task.to(window_device)
        k = self.max_classes_per_pass
        return self.slide(
            inputs,
            lambda window: segment_in_chunks(lambda w, t: segment(w, t, *args, **kwargs), window, task, k),
            network,
        )


def binarize(
    pred: torch.Tensor,
    threshold: float = 0.5,
    largest_component: bool = False,
    connectivity: int | None = None,
    from_logits: bool = False,
) -> torch.Tensor:
    """Probabilities (or logits) ``[B, M, *spatial]`` or ``[M, *spatial]`` -> uint8 masks of the same shape.

    Voxels with probability >= ``threshold`` are foreground (MONAI ``AsDiscrete``). With
    ``largest_component`` only the largest connected component of each mask channel is kept
    (every channel, including channel 0; ``connectivity`` as MONAI, ``None`` = full 26-neighbourhood).
    """
    if from_logits:
        pred = torch.sigmoid(pred.float())
    batched = pred.dim() == 5
    if not batched and pred.dim() != 4:
        raise ValueError(f"binarize expects [B, M, D, H, W] or [M, D, H, W], got {tuple(pred.shape)}")
    items = pred if batched else pred.unsqueeze(0)
    to_binary = AsDiscrete(threshold=threshold)
    out = []
    for item in items:
        masks = convert_to_tensor(to_binary(item.float().detach()), track_meta=False).to(torch.uint8).clone()
        if largest_component:
            masks = convert_to_tensor(keep_largest_per_mask(masks, connectivity), track_meta=False).to(torch.uint8)
        out.append(masks)
    result = torch.stack(out)
    return result if batched else result[0]
