"""Few-shot evaluation: segment test volumes, map predictions back to their own grid, score them.

:func:`segment_volume` preprocesses one query (RAS, common spacing, normalised intensities), runs a
predictor over it with sliding windows, thresholds at 0.5, keeps the largest component per class and
inverts the preprocessing (MONAI ``Invertd``), so masks come back on the query's original grid.
:func:`score_case` computes per-class Dice (MONAI ``DiceMetric``) and HD95
(``HausdorffDistanceMetric(percentile=95)``, mm) against the original label; a class absent from the
label is excluded (``None``) and listed, never scored 0 or 1. :func:`evaluate` does both for a test
split and :func:`summarize` averages over cases.

Example::

    predictor = lambda x: net.segment(x, task)        # or a FixedClassNet: lambda x: model(x)
    result = evaluate(predictor, split["test"], classes, spacing=(2, 2, 2), roi_size=(96, 96, 96))
    result["dice"]["thalamus"], result["excluded"]
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.handlers import IgniteMetricHandler, from_engine
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.transforms import Compose, Invertd, SaveImage

from components.checks.errors import VolumeError, error_message
from components.data.classes import FewShotClass, LabelToMasksd
from components.data.loading import LoadVolumed, check_label_values
from components.data.preprocessing import preprocessing
from components.data.splits import check_labelled
from components.inference.incontext import VolumeInferer, binarize
from components.inference.labels import masks_to_labelmap

logger = logging.getLogger(__name__)

__all__ = [
    "segment_volume",
    "score_case",
    "evaluate",
    "summarize",
    "HausdorffDistanceMM",
]


@torch.no_grad()
def segment_volume(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    image_path: str | os.PathLike,
    spacing: Sequence[float] | None,
    roi_size: Sequence[int],
    modality: str = "mr",
    largest_component: bool = True,
    device: str | torch.device = "cpu",
) -> MetaTensor:
    """Masks ``[M, X, Y, Z]`` (uint8) of one volume, on the image file's own grid and affine.

    ``predictor(window[B, 1, *roi]) -> logits[B, M, *roi]``; windows overlap by 0.5 with Gaussian
    blending of the sigmoid probabilities and padding with the volume's minimum
    (:class:`~components.inference.incontext.VolumeInferer`, the inferer of the bundle's configs).
    """
    pre = Compose(preprocessing(("image",), spacing=spacing, modality=modality))
    d = pre({"image": str(image_path)})
    image = d["image"]
    probs = VolumeInferer(roi_size=roi_size)(image[None].float().to(device), predictor)[0].cpu()
    masks = binarize(probs, threshold=0.5, largest_component=largest_component)
    pred = MetaTensor(masks.float(), meta=dict(image.meta), applied_operations=list(image.applied_operations))
    out = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True)({"image": image, "pred": pred})
    return out["pred"].round().to(torch.uint8)


def _diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(math.sqrt(sum((s * p) ** 2 for s, p in zip(shape, spacing))))


class HausdorffDistanceMM(IgniteMetricHandler):
    """Ignite handler: MONAI ``HausdorffDistanceMetric`` in mm, each case with its own voxel spacing.

    MONAI's ``HausdorffDistance`` handler cannot pass a spacing, so its distances are in voxels. Here
    the spacing is read from each prediction's affine (MetaTensor ``[M, X, Y, Z]`` items of a
    decollated batch, or a batch-first MetaTensor ``[B, M, X, Y, Z]``).
    """

    def __init__(
        self,
        percentile: float | None = 95,
        include_background: bool = True,
        reduction: str = "mean_batch",
        output_transform: Callable | None = None,
        save_details: bool = True,
    ) -> None:
        metric_fn = HausdorffDistanceMetric(
            include_background=include_background, percentile=percentile, reduction=reduction
        )
        transform = output_transform if output_transform is not None else from_engine(["pred", "label"])
        super().__init__(metric_fn=metric_fn, output_transform=transform, save_details=save_details)

    @staticmethod
    def _spacing(pred: Any) -> list[list[float]]:
        if isinstance(pred, (list, tuple)):
            items = list(pred)
        else:
            items = [pred[b] for b in range(pred.shape[0])]
        out = []
        for item in items:
            if not isinstance(item, MetaTensor):
                raise TypeError("HausdorffDistanceMM needs MetaTensor predictions (their affine gives the spacing)")
            out.append([float(v) for v in affine_to_spacing(item.affine, r=item.ndim - 1)])
        return out

    def update(self, output: Sequence[Any]) -> None:
        if len(output) != 2:
            raise ValueError(f"output must be (pred, label), got {len(output)} items")
        y_pred, y = output
        self.metric_fn(y_pred, y, spacing=self._spacing(y_pred))


def score_case(
    pred: torch.Tensor, gt: torch.Tensor, spacing: Sequence[float], names: Sequence[str]
) -> dict[str, dict[str, float] | None]:
    """Per-class ``{"dice", "hd95"}`` for masks ``pred``/``gt`` ``[M, X, Y, Z]``; ``None`` where gt is empty.

    HD95 is in mm (voxel ``spacing``); an empty prediction of a present class gets the image diagonal
    (the worst possible distance) instead of MONAI's ``inf``.
    """
    pred = torch.as_tensor(pred).float()[None]
    gt = torch.as_tensor(gt).float()[None]
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(gt.shape)} differ in shape")
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=True)(pred, gt)[0]
    present = gt[0].flatten(1).any(1)
    hd = torch.full((len(names),), float("nan"))
    if bool(present.any()):
        idx = torch.nonzero(present)[:, 0]
        hd_p = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")(
            pred[:, idx], gt[:, idx], spacing=[float(s) for s in spacing]
        )[0]
        hd[idx] = torch.as_tensor(hd_p).float()
    worst = _diagonal_mm(gt.shape[2:], spacing)
    out: dict[str, dict[str, float] | None] = {}
    for m, name in enumerate(names):
        if not bool(present[m]):
            out[name] = None
            continue
        h = float(hd[m])
        out[name] = {"dice": float(dice[m]), "hd95": worst if not math.isfinite(h) else h}
    return out


def evaluate(
    predictor: Callable[[torch.Tensor], torch.Tensor],
    test: Sequence[Mapping[str, Any]],
    classes: Sequence[FewShotClass],
    spacing: Sequence[float] | None,
    roi_size: Sequence[int],
    modality: str = "mr",
    save_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    largest_component: bool = True,
) -> dict[str, Any]:
    """Segment and score every test volume; returns :func:`summarize` of the cases plus ``cases``.

    ``largest_component`` keeps only the largest connected component of each class (as released);
    ``False`` scores the thresholded prediction as it is (bilateral structures keep both sides).

    With ``save_dir`` each prediction is written as a label map NIfTI (0 = none, m+1 = ``classes[m]``)
    on the query's grid. A volume that fails (unreadable, grid mismatch) is recorded under
    ``"failed"`` and the others go on.
    """
    check_labelled(test)
    names = [c.name for c in classes]
    read_label = LoadVolumed("label", dtype=None)  # native dtype: a float label map is refused, not truncated
    to_masks = LabelToMasksd("label", classes)
    cases, failed = [], {}
    for item in test:
        try:
            raw = read_label({"label": item["label"]})["label"]
            check_label_values(raw, str(item["label"]))
            pred = segment_volume(predictor, item["image"], spacing, roi_size, modality, largest_component, device)
            if tuple(raw.shape[1:]) != tuple(pred.shape[1:]):
                raise VolumeError(
                    item["label"],
                    f"label grid {tuple(raw.shape[1:])} differs from image {item['image']} grid {tuple(pred.shape[1:])}",
                )
            check_same_affine(raw, pred, str(item["label"]), str(item["image"]))
            gt = to_masks({"label": raw})["label"]
            vox = np.sqrt((np.asarray(gt.affine)[:3, :3] ** 2).sum(0))
            scores = score_case(pred, gt, vox.tolist(), names)
            if save_dir is not None:
                lab = MetaTensor(masks_to_labelmap(pred), meta=dict(pred.meta))
                SaveImage(
                    output_dir=str(save_dir),
                    output_postfix="fewshot",
                    separate_folder=False,
                    output_dtype=np.uint8,
                    resample=False,
                    print_log=False,
                )(lab)
            cases.append({"image": str(item["image"]), "scores": scores})
        except (ValueError, OSError, RuntimeError) as exc:
            failed[str(item["image"])] = error_message(exc)
            logger.error("few-shot evaluation of %s failed: %s", item["image"], error_message(exc))
    result = summarize(cases, names)
    result["failed"] = failed
    return result


def check_same_affine(label: Any, image: Any, label_path: str, image_path: str, atol: float = 1e-3) -> None:
    """Raise :class:`VolumeError` if the label's affine (position, spacing, orientation) is not the image's."""
    a, b = getattr(label, "affine", None), getattr(image, "affine", None)
    if a is None or b is None:
        return
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not np.allclose(a, b, atol=atol):
        shift = float(np.abs(a[:3, 3] - b[:3, 3]).max())
        raise VolumeError(
            label_path,
            f"affine (position/spacing/orientation) does not match image {image_path} (origin differs by up to {shift:.1f} mm)",
        )


def summarize(cases: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Mean Dice/HD95 per class over the cases where the class is present, and their class means.

    Returns ``{"dice": {name: float|nan}, "hd95": {...}, "dice_mean", "hd95_mean", "n_cases",
    "excluded": {image: [absent class names]}, "cases": [...]}``.
    """
    dice: dict[str, float] = {}
    hd95: dict[str, float] = {}
    excluded: dict[str, list[str]] = {}
    for name in names:
        vals = [c["scores"][name] for c in cases if c["scores"].get(name) is not None]
        dice[name] = float(np.mean([v["dice"] for v in vals])) if vals else float("nan")
        hd95[name] = float(np.mean([v["hd95"] for v in vals])) if vals else float("nan")
    for c in cases:
        absent = [n for n in names if c["scores"].get(n) is None]
        if absent:
            excluded[c["image"]] = absent
    finite_d = [v for v in dice.values() if math.isfinite(v)]
    finite_h = [v for v in hd95.values() if math.isfinite(v)]
    return {
        "dice": dice,
        "hd95": hd95,
        "dice_mean": float(np.mean(finite_d)) if finite_d else float("nan"),
        "hd95_mean": float(np.mean(finite_h)) if finite_h else float("nan"),
        "n_cases": len(cases),
        "excluded": excluded,
        "cases": list(cases),
    }
