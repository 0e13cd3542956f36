"""In-context inference on volumes of any size.

* :class:`InContextInferer` — a MONAI ``Inferer``: runs ``net.segment(window, task)`` over the query
  with MONAI's ``SlidingWindowInferer`` (window <= 128^3, overlap 0.5, Gaussian blending); the task
  embedding is computed once and shared by every window.
* :func:`binarize` — threshold (MONAI ``AsDiscrete``) and optional largest connected component per
  mask channel (MONAI ``KeepLargestConnectedComponent``).
* :func:`crop_reference` — a reference image/mask window centred on the label's bounding box,
  padded where the volume is smaller than the window.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import Inferer, SlidingWindowInferer
from monai.transforms import AsDiscrete, KeepLargestConnectedComponent
from monai.utils import convert_to_tensor

__all__ = ["InContextInferer", "binarize", "crop_reference", "reference_window", "fit_roi"]

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


class InContextInferer(Inferer):
    """Sliding-window in-context segmentation of a query volume.

    Args:
        roi_size: window size, each dim a multiple of 16 and <= the network's ``max_window``.
        overlap: window overlap (0.5 as the release).
        mode: blending, ``"gaussian"`` (release) or ``"constant"``.
        sigma_scale: Gaussian sigma as a fraction of the window (MONAI default).
        sw_batch_size: windows per network call.
        output: ``"probabilities"`` (sigmoid per window, then blended, as the release) or ``"logits"``.
        padding_value: fill for volumes smaller than the window; ``None`` uses the query's minimum
            (background of a z-scored scan rather than mid-grey 0).
        shrink_roi: shrink the window to the volume (rounded up to 16) where the volume is smaller.
        sw_device / device: as MONAI ``SlidingWindowInferer`` (window compute / output device).
        task: default TaskEmbedding used when ``__call__`` gets none (lets a MONAI evaluator call
            ``inferer(inputs, network)``).

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
        task: Any = None,
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
        self.task = task

    def window_for(self, spatial_size: Sequence[int], network: Any = None) -> tuple[int, int, int]:
        """The window used for a query grid (clipped to ``network.max_window`` when it has one)."""
        roi = self.roi_size
        max_window = getattr(network, "max_window", None)
        if max_window is not None and max(roi) > max_window:
            raise ValueError(f"roi_size {roi} exceeds the network's max_window {max_window}")
        return fit_roi(spatial_size, roi) if self.shrink_roi else roi

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
        if inputs.dim() != 5:
            raise ValueError(f"query must be [B, C, D, H, W], got shape {tuple(inputs.shape)}")
        segment: Callable[[torch.Tensor, Any], torch.Tensor] = getattr(network, "segment", network)
        window_device = torch.device(self.sw_device) if self.sw_device is not None else inputs.device
        if hasattr(task, "to"):
            task = task.to(window_device)
        want_probs = self.output == "probabilities"

        def predictor(window: torch.Tensor) -> torch.Tensor:
            logits = segment(window, task, *args, **kwargs)
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
        return sliding(inputs.float(), predictor)


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
        if largest_component and masks.shape[0] > 0:
            keep = KeepLargestConnectedComponent(
                applied_labels=list(range(masks.shape[0])), is_onehot=True, independent=True, connectivity=connectivity
            )
            masks = convert_to_tensor(keep(masks), track_meta=False).to(torch.uint8)
        out.append(masks)
    result = torch.stack(out)
    return result if batched else result[0]


def _label_channels(mask: torch.Tensor, labels: Sequence[int] | None) -> torch.Tensor:
    """``[M, D, H, W]`` binary masks from masks or a label map ``[1, D, H, W]`` and label ids."""
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
    fg = _label_channels(mask, labels)
    roi = _triple(roi_size, "roi_size")
    empty = [i for i in range(fg.shape[0]) if not bool(fg[i].any())]
    if empty:
        raise ValueError(f"reference mask channel(s) {empty} are empty: nothing to centre the reference on")
    coords = torch.nonzero(fg.any(0))
    lo, hi = coords.min(0).values.tolist(), coords.max(0).values.tolist()
    size = fg.shape[1:]
    start, extent = [], []
    for lo_d, hi_d, r, s in zip(lo, hi, roi, size):
        centre = (lo_d + hi_d + 1) / 2.0
        begin = int(math.floor(centre - r / 2.0 + 0.5))
        begin = min(max(begin, 0), max(s - r, 0))
        start.append(begin)
        extent.append(min(r, s))
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
    minimum), the masks with 0. Returns ``(image_crop[1, *roi], masks[M, *roi] float {0, 1})``.
    """
    if image.dim() != 4:
        raise ValueError(f"reference image must be [C, D, H, W], got {tuple(image.shape)}")
    fg = _label_channels(mask, labels)
    if fg.shape[1:] != image.shape[1:]:
        raise ValueError(f"reference mask grid {tuple(fg.shape[1:])} differs from image grid {tuple(image.shape[1:])}")
    roi = _triple(roi_size, "roi_size")
    start, extent = reference_window(fg, roi)
    box = tuple(slice(b, b + e) for b, e in zip(start, extent))
    img = image[(slice(None),) + box]
    msk = fg[(slice(None),) + box].to(torch.float32)
    lost = [i for i in range(msk.shape[0]) if not bool(msk[i].any())]
    if lost:
        warnings.warn(
            f"crop_reference: mask channel(s) {lost} fall outside the {roi} window around the labels", stacklevel=2
        )
    pad: list[int] = []
    for e, r in zip(reversed(extent), reversed(roi)):  # F.pad order: last dim first
        diff = r - e
        pad.extend([diff // 2, diff - diff // 2])
    if any(pad):
        fill = float(image.min()) if image_pad_value is None else float(image_pad_value)
        img = F.pad(img, pad, mode="constant", value=fill)
        msk = F.pad(msk, pad, mode="constant", value=0.0)
    return img, msk
