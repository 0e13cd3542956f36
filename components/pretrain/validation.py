"""Validation data for pretraining: in-context Dice on expert/atlas labels of held-out volumes.

Each pair ``{"ref_image", "ref_label", "image", "label", "modality"?}`` gives a reference volume whose
label channels define the tasks and a query volume to segment (same label ids). Both are loaded
with the training preprocessing (RAS, target spacing, per-modality normalisation). The reference is
cropped to ``roi_size`` around its label's foreground (padded with the volume minimum): it is the
labelled support. The query is the whole volume, never cropped around its own labels: the bundle's
label evaluator segments it with sliding windows (``ReferenceInferer``, ``max_classes_per_pass``
classes per pass, as the few-shot in-context path), so ``val_label_dice`` is one whole-volume Dice.
Items have the training sample keys (``query_image``, ``query_masks``, ``ref_image``, ``ref_masks``,
``valid``), so ``prepare_incontext_batch`` and MONAI ``MeanDice`` apply. (Held-out *mask-set*
validation uses :class:`~components.pretrain.dataset.MaskPretrainDataset` itself with fixed sample ids.)
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import CropForegroundd, ResizeWithPadOrCropd
from torch.utils.data import Dataset

from components.checks.errors import VolumeError
from components.data.intensity import ModalityNormalize
from components.data.loading import load_volume

__all__ = ["LabelPairDataset"]


def _load(
    image: str, label: str, spacing: Sequence[float] | None, roi: Sequence[int] | None, modality: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """image [1, *] float, label [*] int32 on the target grid; with ``roi``: cropped around the label."""
    img = load_volume(image, spacing=spacing)
    lab: torch.Tensor = load_volume(label)  # native grid first, then the image's target grid with nearest neighbour
    if spacing is not None:
        from monai.transforms import ResampleToMatch

        lab = ResampleToMatch(mode="nearest")(lab, img)
    if tuple(lab.shape) != tuple(img.shape):
        raise VolumeError(label, f"label grid {tuple(lab.shape[1:])} does not match image {tuple(img.shape[1:])}")
    x = ModalityNormalize(modality)(img)  # modality None: guessed from the image
    d: dict[Hashable, Any] = {"image": x, "label": torch.as_tensor(lab).round().to(torch.int32)}
    if roi is None:
        return torch.as_tensor(d["image"]).float(), torch.as_tensor(d["label"])[0]
    d = CropForegroundd(["image", "label"], source_key="label", allow_smaller=True)(d)
    d = ResizeWithPadOrCropd(["image", "label"], spatial_size=tuple(roi), value=float(x.min()))(d)
    return torch.as_tensor(d["image"]).float(), torch.as_tensor(d["label"])[0]


class LabelPairDataset(Dataset):
    """Reference/query label pairs for in-context validation (all items prepared at construction).

    Args:
        pairs: ``{"ref_image", "ref_label", "image", "label", "modality"?}`` dicts.
        spacing: target spacing (mm) as in training.
        roi_size: the reference's window (each dim divisible by 16, <= 128); the query stays whole.
        label_ids: ids to evaluate (default: every id present in both label maps).
        max_masks: pad/cap the mask dimension to this many channels (default: number of ids).
    """

    def __init__(
        self,
        pairs: Sequence[Mapping[str, Any]],
        spacing: Sequence[float] | None = (1.5, 1.5, 1.5),
        roi_size: Sequence[int] = (128, 128, 128),
        label_ids: Sequence[int] | None = None,
        max_masks: int | None = None,
    ) -> None:
        self.items: list[dict[str, Any]] = []
        for p in pairs:
            try:
                ri, rl = _load(p["ref_image"], p["ref_label"], spacing, roi_size, p.get("modality"))
                qi, ql = _load(p["image"], p["label"], spacing, None, p.get("modality"))
            except (VolumeError, OSError, ValueError, KeyError) as e:
                warnings.warn(f"skipping validation pair: {e}", stacklevel=2)
                continue
            ids = [int(i) for i in np.intersect1d(torch.unique(rl).numpy(), torch.unique(ql).numpy()) if i > 0]
            if label_ids is not None:
                ids = [i for i in ids if i in {int(j) for j in label_ids}]
            m = int(max_masks or len(ids))
            ids = ids[:m]
            if not ids:
                warnings.warn(
                    f"skipping validation pair: {p['image']}: no label id shared with {p['ref_label']}", stacklevel=2
                )
                continue
            valid = torch.zeros(m, dtype=torch.bool)
            valid[: len(ids)] = True
            rm = torch.zeros((m, *rl.shape), dtype=torch.bool)
            qm = torch.zeros((m, *ql.shape), dtype=torch.bool)
            for k, i in enumerate(ids):
                rm[k], qm[k] = rl == i, ql == i
            self.items.append(
                {
                    "ref_image": ri,
                    "ref_masks": rm,
                    "query_image": qi,
                    "query_masks": qm,
                    "valid": valid,
                    "label_ids": torch.tensor(ids + [-1] * (m - len(ids))),
                }
            )
        if pairs and not self.items:
            raise ValueError(f"no usable validation pair among {len(pairs)} (see warnings above)")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]
