"""Dice + binary cross-entropy loss for multi-mask in-context segmentation.

Pretraining predicts ``M`` independent binary masks per sample (one per reference mask), so the
targets are multi-label, not one-hot. Samples with fewer than ``M`` masks are padded in the mask
dimension; the ``valid`` argument (or ``padding_value``) keeps those padded channels out of both
terms.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import DiceLoss

__all__ = ["AdaptiveTverskyBCELoss", "DiceBCELoss"]

# sigmoid(-1e4) is exactly 0 in float32/bfloat16: a padded channel contributes nothing to a
# batch-pooled Dice when its logits are replaced by this value and its target by 0.
_NEG_LOGIT = -1.0e4


def valid_channels(
    name: str, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None, padding_value: float | None
) -> torch.Tensor:
    """``[B, M]`` bool of the (sample, mask) channels that count: ``valid`` if given (shape checked), else
    the channels whose target is not ``padding_value`` everywhere (all when ``padding_value`` is None)."""
    b, m = logits.shape[:2]
    if valid is None:
        if padding_value is None:
            return torch.ones(b, m, dtype=torch.bool, device=logits.device)
        return ~(target == padding_value).flatten(2).all(dim=2)
    if tuple(valid.shape) != (b, m):
        raise ValueError(f"{name}: valid must have shape [B, M]={(b, m)}, got {tuple(valid.shape)}")
    return valid.to(device=logits.device, dtype=torch.bool)


class DiceBCELoss(nn.Module):
    """``dice_weight * Dice(sigmoid(logits), target) + bce_weight * BCEWithLogits(logits, target)``.

    The paper combines the two terms 1:1. The Dice term is MONAI's ``DiceLoss(sigmoid=True)``
    (no background channel removal: every mask channel is a foreground mask).

    Args:
        dice_weight: weight of the soft Dice term.
        bce_weight: weight of the binary cross-entropy term.
        smooth_nr: Dice numerator smoothing (MONAI ``smooth_nr``).
        smooth_dr: Dice denominator smoothing (MONAI ``smooth_dr``).
        batch: ``False``: one Dice per (sample, mask), averaged over valid pairs;
            ``True``: intersection and union pooled over the batch per mask channel (MONAI ``batch``).
        squared_pred: squared terms in the Dice denominator (MONAI ``squared_pred``).
        padding_value: if given and ``valid`` is not passed, a channel whose target is equal to
            this value everywhere is treated as padding (lets a plain ``loss(y_pred, y)`` call,
            e.g. from an Ignite ``SupervisedTrainer``, carry the padding inside the target).

    Shapes:
        ``logits``: ``[B, M, *spatial]``; ``target``: same shape, values in {0, 1};
        ``valid``: ``[B, M]`` bool (``True`` = real mask). Returns a scalar.

    Example::

        loss_fn = DiceBCELoss()
        loss = loss_fn(logits, masks, valid=torch.tensor([[True, True, False]]))
    """

    def __init__(
        self,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        squared_pred: bool = False,
        padding_value: float | None = None,
    ) -> None:
        super().__init__()
        if dice_weight < 0 or bce_weight < 0 or dice_weight + bce_weight == 0:
            raise ValueError(
                f"DiceBCELoss: weights must be >= 0 and not both 0, got dice_weight={dice_weight}, "
                f"bce_weight={bce_weight}"
            )
        self.dice_weight = float(dice_weight)
        self.bce_weight = float(bce_weight)
        self.batch = batch
        self.padding_value = padding_value
        self.dice = DiceLoss(
            include_background=True,
            sigmoid=True,
            squared_pred=squared_pred,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            reduction="none",
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of ``logits[B, M, *spatial]`` against ``target`` (same shape) over valid channels."""
        if logits.shape != target.shape:
            raise ValueError(
                f"DiceBCELoss: logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the same shape"
            )
        if logits.ndim < 3:
            raise ValueError(f"DiceBCELoss: expected [B, M, *spatial], got {tuple(logits.shape)}")
        keep = valid_channels("DiceBCELoss", logits, target, valid, self.padding_value)  # [B, M]
        n_valid = keep.sum()
        if n_valid == 0:
            # nothing to learn from; keep the graph so backward() still works
            return logits.sum() * 0.0

        target = torch.where(keep[(...,) + (None,) * (target.ndim - 2)], target, torch.zeros_like(target))
        target = target.to(logits.dtype)
        total = logits.new_zeros((), dtype=torch.float32)

        if self.bce_weight > 0:
            bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
            bce = bce.flatten(2).mean(dim=2)  # [B, M]
            total = total + self.bce_weight * bce[keep].mean()

        if self.dice_weight > 0:
            if self.batch:
                # pooled over the batch per channel: remove padded channels from the sums
                kept = keep[(...,) + (None,) * (logits.ndim - 2)]
                masked = torch.where(kept, logits, torch.full_like(logits, _NEG_LOGIT))
                dice = self.dice(masked.float(), target.float()).reshape(-1)  # [M]
                total = total + self.dice_weight * dice[keep.any(dim=0)].mean()
            else:
                dice = self.dice(logits.float(), target.float()).reshape(keep.shape)  # [B, M]
                total = total + self.dice_weight * dice[keep].mean()
        return total


class AdaptiveTverskyBCELoss(nn.Module):
    """``tversky_weight * AdaptiveTversky(sigmoid(logits), target) + bce_weight * BCEWithLogits``.

    The released pretraining objective. Per (sample, mask) channel, with ``P = sigmoid(logits)``:
    ``TP = sum(P * y)``, ``FP = sum(P * (1 - y))``, ``FN = sum((1 - P) * y)``,
    ``alpha = clamp(FP / (FP + FN + smooth), alpha_min, alpha_max)``, ``beta = 1 - alpha`` and
    ``loss = 1 - TP / (TP + alpha * FP + beta * FN + smooth)``; gradients flow through ``alpha``
    too (zero where it is clamped). When a
    prediction is too small (``FN > FP``) misses weigh up to ``alpha_max / alpha_min`` = 4 times
    more than false alarms, which counteracts the collapse to empty masks that plain soft Dice
    shows on small masks. Empty target channels are kept, as released: their Tversky term is 1
    unless the prediction is empty too. BCE is the mean over voxels, then over channels.

    Args:
        tversky_weight: weight of the adaptive Tversky term (release: 1).
        bce_weight: weight of the binary cross-entropy term (release: 1).
        alpha_min: lower clamp of ``alpha`` (release: 0.2).
        alpha_max: upper clamp of ``alpha`` (release: 0.8).
        smooth: added to the ``alpha`` and Tversky denominators (release: 1e-6).
        padding_value: if given and ``valid`` is not passed, a channel whose target equals this
            value everywhere is padding and is left out of both terms (as in :class:`DiceBCELoss`).

    Shapes:
        ``logits``: ``[B, M, *spatial]``; ``target``: same shape, values in {0, 1};
        ``valid``: ``[B, M]`` bool. Returns a scalar; :meth:`terms` returns both terms too.

    Example::

        loss_fn = AdaptiveTverskyBCELoss()
        loss = loss_fn(logits, masks)
    """

    def __init__(
        self,
        tversky_weight: float = 1.0,
        bce_weight: float = 1.0,
        alpha_min: float = 0.2,
        alpha_max: float = 0.8,
        smooth: float = 1e-6,
        padding_value: float | None = None,
    ) -> None:
        super().__init__()
        if tversky_weight < 0 or bce_weight < 0 or tversky_weight + bce_weight == 0:
            raise ValueError(
                f"AdaptiveTverskyBCELoss: weights must be >= 0 and not both 0, got tversky_weight="
                f"{tversky_weight}, bce_weight={bce_weight}"
            )
        if not 0.0 <= alpha_min <= alpha_max <= 1.0:
            raise ValueError(
                f"AdaptiveTverskyBCELoss: need 0 <= alpha_min <= alpha_max <= 1, got {alpha_min}, {alpha_max}"
            )
        self.tversky_weight = float(tversky_weight)
        self.bce_weight = float(bce_weight)
        self.alpha_min = float(alpha_min)
        self.alpha_max = float(alpha_max)
        self.smooth = float(smooth)
        self.padding_value = padding_value

    def terms(
        self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(total, tversky, bce)`` as float32 scalars, each the mean over valid (sample, mask) channels."""
        if logits.shape != target.shape:
            raise ValueError(
                f"AdaptiveTverskyBCELoss: logits {tuple(logits.shape)} and target {tuple(target.shape)} "
                "must have the same shape"
            )
        if logits.ndim < 3:
            raise ValueError(f"AdaptiveTverskyBCELoss: expected [B, M, *spatial], got {tuple(logits.shape)}")
        keep = valid_channels("AdaptiveTverskyBCELoss", logits, target, valid, self.padding_value)
        zero = logits.sum() * 0.0
        if not bool(keep.any()):
            return zero, zero, zero  # nothing to learn from; the graph stays for backward()
        x = logits.float().flatten(2)
        y = torch.where(keep[..., None], target.float().flatten(2), torch.zeros_like(x))
        bce = F.binary_cross_entropy_with_logits(x, y, reduction="none").mean(dim=2)[keep].mean()
        p = torch.sigmoid(x)
        tp = (p * y).sum(dim=2)
        fp = (p * (1.0 - y)).sum(dim=2)
        fn = ((1.0 - p) * y).sum(dim=2)
        alpha = (fp / (fp + fn + self.smooth)).clamp(self.alpha_min, self.alpha_max)
        tversky = 1.0 - tp / (tp + alpha * fp + (1.0 - alpha) * fn + self.smooth)
        tversky = tversky[keep].mean()
        total = self.tversky_weight * tversky + self.bce_weight * bce
        return total, tversky, bce

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Loss of ``logits[B, M, *spatial]`` against ``target`` (same shape) over valid channels."""
        return self.terms(logits, target, valid)[0]
