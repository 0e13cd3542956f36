"""DiceBCELoss: known values, agreement with MONAI/torch terms, padded mask channels ignored."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from components.losses.segmentation import DiceBCELoss


def _blobs(b: int = 2, m: int = 3, size: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(b, m, size, size, size)
    for i in range(b):
        for j in range(m):
            lo = torch.randint(0, size // 2, (3,), generator=g)
            hi = lo + torch.randint(2, size // 2, (3,), generator=g)
            target[i, j, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1.0
    return target


def test_perfect_prediction_is_near_zero_and_inverted_is_high():
    target = _blobs()
    loss_fn = DiceBCELoss()
    perfect = loss_fn(torch.where(target > 0, 20.0, -20.0), target)
    inverted = loss_fn(torch.where(target > 0, -20.0, 20.0), target)
    assert perfect.item() < 1e-4
    # Dice ~1 plus BCE ~20 nats per voxel
    assert inverted.item() == pytest.approx(21.0, abs=0.05)


def test_hand_computed_value_at_zero_logits():
    """p = 0.5 everywhere, half the voxels foreground: Dice loss 0.5, BCE ln 2."""
    target = torch.zeros(1, 2, 4, 4, 4)
    target[:, :, :2] = 1.0
    loss = DiceBCELoss(smooth_nr=0.0, smooth_dr=1e-12)(torch.zeros_like(target), target)
    assert loss.item() == pytest.approx(0.5 + math.log(2.0), rel=1e-5)
    only_bce = DiceBCELoss(dice_weight=0.0)(torch.zeros_like(target), target)
    assert only_bce.item() == pytest.approx(math.log(2.0), rel=1e-6)
    weighted = DiceBCELoss(dice_weight=2.0, bce_weight=0.5, smooth_nr=0.0, smooth_dr=1e-12)(
        torch.zeros_like(target), target
    )
    assert weighted.item() == pytest.approx(2.0 * 0.5 + 0.5 * math.log(2.0), rel=1e-5)


@pytest.mark.parametrize("batch", [False, True])
def test_equals_monai_dice_plus_torch_bce_without_padding(batch):
    torch.manual_seed(0)
    target = _blobs()
    logits = torch.randn_like(target) * 3
    expected = DiceLoss(sigmoid=True, batch=batch)(logits, target) + F.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(DiceBCELoss(batch=batch)(logits, target), expected)


@pytest.mark.parametrize("batch", [False, True])
def test_padded_channels_do_not_count(batch):
    torch.manual_seed(1)
    target = _blobs(b=2, m=3)
    logits = torch.randn_like(target) * 3
    valid = torch.tensor([[True, True, True], [True, False, False]])
    # the padded channels hold garbage: an inverted prediction and a target of -1
    garbage_logits = logits.clone()
    garbage_logits[1, 1:] = torch.where(target[1, 1:] > 0, -30.0, 30.0)
    garbage_target = target.clone()
    garbage_target[1, 1:] = -1.0

    loss_fn = DiceBCELoss(batch=batch)
    got = loss_fn(garbage_logits, garbage_target, valid=valid)

    if not batch:
        # one Dice / BCE per real (sample, mask) pair, averaged over the 4 real pairs
        pairs = [(0, 0), (0, 1), (0, 2), (1, 0)]
        dice = DiceLoss(sigmoid=True, reduction="none")
        terms = [
            dice(logits[i : i + 1, j : j + 1], target[i : i + 1, j : j + 1]).mean()
            + F.binary_cross_entropy_with_logits(logits[i, j], target[i, j])
            for i, j in pairs
        ]
        expected = torch.stack(terms).mean()
    else:
        # channel 0 pooled over both samples, channels 1-2 from sample 0 only
        dice = DiceLoss(sigmoid=True, batch=True, reduction="none")
        d = torch.stack(
            [
                dice(logits[:, :1], target[:, :1]).mean(),
                dice(logits[:1, 1:2], target[:1, 1:2]).mean(),
                dice(logits[:1, 2:3], target[:1, 2:3]).mean(),
            ]
        ).mean()
        bce = torch.stack(
            [
                F.binary_cross_entropy_with_logits(logits[i, j], target[i, j])
                for i, j in [(0, 0), (0, 1), (0, 2), (1, 0)]
            ]
        ).mean()
        expected = d + bce
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # the same result when the padding is signalled inside the target only
    by_value = DiceBCELoss(batch=batch, padding_value=-1.0)(garbage_logits, garbage_target)
    torch.testing.assert_close(by_value, got)
    # and the garbage really would have mattered
    assert loss_fn(garbage_logits, garbage_target.clamp(min=0)).item() > got.item() + 1.0


def test_padded_channels_get_no_gradient_and_all_padded_is_zero():
    target = _blobs(b=1, m=2)
    logits = torch.randn_like(target, requires_grad=True)
    valid = torch.tensor([[True, False]])
    DiceBCELoss(batch=True)(logits, target, valid=valid).backward()
    assert logits.grad[0, 0].abs().sum() > 0
    assert logits.grad[0, 1].abs().sum() == 0

    logits.grad = None
    loss = DiceBCELoss()(logits, target, valid=torch.zeros(1, 2, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad.abs().sum() == 0


def test_bad_shapes_are_reported():
    loss_fn = DiceBCELoss()
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="valid"):
        loss_fn(torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 2, 4, 4, 4), valid=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="weights"):
        DiceBCELoss(dice_weight=0.0, bce_weight=0.0)


# --- AdaptiveTverskyBCELoss: the released pretraining objective ---------------------------------


def test_tversky_hand_computed_value_and_alpha_clamp():
    """p = 0.5 on 8 voxels, 2 of them foreground: TP 1, FP 3, FN 1 -> alpha = 3/4 (inside the clamp)."""
    from components.losses.segmentation import AdaptiveTverskyBCELoss

    target = torch.zeros(1, 1, 2, 2, 2)
    target[0, 0, 0, 0] = 1.0
    total, tversky, bce = AdaptiveTverskyBCELoss(smooth=0.0).terms(torch.zeros_like(target), target)
    alpha = 0.75
    expected = 1.0 - 1.0 / (1.0 + alpha * 3.0 + (1 - alpha) * 1.0)
    assert tversky.item() == pytest.approx(expected, rel=1e-6)
    assert bce.item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert total.item() == pytest.approx(expected + math.log(2.0), rel=1e-6)
    # an empty prediction of a present mask: FP ~ 0 -> alpha clamped to 0.2, misses weigh 0.8
    logits = torch.full_like(target, -30.0)
    _, t_empty, _ = AdaptiveTverskyBCELoss(smooth=0.0).terms(logits, target)
    assert t_empty.item() == pytest.approx(1.0, abs=1e-6)


def test_tversky_weighs_misses_more_than_plain_dice_when_prediction_shrinks():
    """Half of a blob predicted: the adaptive loss is above plain soft Dice (alpha clamps at 0.2)."""
    from components.losses.segmentation import AdaptiveTverskyBCELoss

    target = _blobs(b=1, m=2, size=16, seed=3)
    logits = torch.where(target > 0, 8.0, -8.0)
    logits[..., : target.shape[-1] // 2] = -8.0  # lose half of each mask
    tversky = AdaptiveTverskyBCELoss(bce_weight=0.0)(logits, target)
    dice = DiceBCELoss(bce_weight=0.0)(logits, target)
    assert tversky.item() > dice.item()


def test_tversky_matches_the_release_terms_on_the_reference_batch(shared_dir):
    """Step-0 logits of the release's own training step give its loss, Tversky and BCE terms (<= 1e-5)."""
    from components.losses.segmentation import AdaptiveTverskyBCELoss

    ref = torch.load(shared_dir / "reference" / "train_step.pt", weights_only=True)
    total, tversky, bce = AdaptiveTverskyBCELoss().terms(ref["logits_step0"], ref["batch"]["tgt_mask"])
    step = ref["steps"][0]
    for ours, theirs in ((total, step["loss"]), (tversky, step["dice"]), (bce, step["bce"])):
        assert abs(ours.item() - theirs) / abs(theirs) <= 1e-5
    # plain soft Dice disagrees on the same logits (the reason for the separate class)
    dice = DiceBCELoss(bce_weight=0.0, smooth_nr=1e-6, smooth_dr=1e-6)(ref["logits_step0"], ref["batch"]["tgt_mask"])
    assert abs(dice.item() - step["dice"]) > 1e-2


def test_tversky_padding_channels_are_ignored_and_all_padding_keeps_the_graph():
    from components.losses.segmentation import AdaptiveTverskyBCELoss

    target = _blobs(b=2, m=3, size=8)
    logits = torch.randn_like(target)
    valid = torch.tensor([[True, True, False], [True, False, False]])
    loss_fn = AdaptiveTverskyBCELoss()
    expected = torch.stack(
        [loss_fn(logits[i : i + 1, j : j + 1], target[i : i + 1, j : j + 1]) for i, j in ((0, 0), (0, 1), (1, 0))]
    )
    # both terms are means over the same kept channels, so the total is the mean of per-channel totals
    assert loss_fn(logits, target, valid=valid).item() == pytest.approx(expected.mean().item(), rel=1e-5)
    none = loss_fn(logits.requires_grad_(), target, valid=torch.zeros(2, 3, dtype=torch.bool))
    none.backward()
    assert none.item() == 0.0
    with pytest.raises(ValueError, match="same shape"):
        loss_fn(logits[:, :2], target)
