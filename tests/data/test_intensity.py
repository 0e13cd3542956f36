"""The one intensity normaliser: the numbers of the pretraining recipe on real demo volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from components.data.intensity import (
    CT_WINDOW,
    MR_PERCENTILES,
    ModalityNormalize,
    ModalityNormalized,
    guess_modality,
    resolve_modality,
)
from components.data.loading import LoadVolumed, load_volume


def _reference(x: torch.Tensor, modality: str) -> torch.Tensor:
    """The recipe written out by hand: HU clip or percentile clip, then z-score (population std)."""
    a = x.as_tensor().double() if isinstance(x, MetaTensor) else x.double()
    if modality == "CT":
        a = a.clamp(*CT_WINDOW)
    else:
        lo, hi = np.percentile(a.numpy(), MR_PERCENTILES)
        a = a.clamp(float(lo), float(hi))
    return ((a - a.mean()) / a.std(unbiased=False)).float()


@pytest.mark.parametrize(("name", "modality"), [("colin27_t1", "MR"), ("head_ct", "CT"), ("lung1_ct", "CT")])
def test_auto_normalisation_matches_the_recipe_on_demo_volumes(demo_data, name, modality):
    vol = load_volume(demo_data / f"{name}.nii.gz")
    assert guess_modality(vol) == modality
    out = ModalityNormalize("auto")(vol)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32 and out.shape == vol.shape
    assert out.meta["filename_or_obj"] == vol.meta["filename_or_obj"]
    torch.testing.assert_close(out.as_tensor(), _reference(vol, modality), rtol=1e-4, atol=1e-4)
    # the explicit modality, the dict transform (item entry or fixed) and the auto guess agree
    explicit = ModalityNormalize(modality)(vol)
    assert torch.equal(explicit, out)
    from_item = ModalityNormalized("image")({"image": vol.clone(), "modality": modality.lower()})["image"]
    fixed = ModalityNormalized("image", modality=modality, modality_key=None)({"image": vol.clone()})["image"]
    assert torch.equal(from_item, out) and torch.equal(fixed, out)


def test_item_modality_wins_unless_ignored(demo_data):
    raw = LoadVolumed("image")({"image": str(demo_data / "head_ct.nii.gz")})["image"].float()
    ct = ModalityNormalized("image", modality="MR")({"image": raw.clone(), "modality": "CT"})["image"]
    clipped = raw.clamp(*CT_WINDOW)
    torch.testing.assert_close(ct, (clipped - clipped.mean()) / clipped.std(unbiased=False), rtol=1e-4, atol=1e-4)
    assert abs(float(ct.mean())) < 1e-4 and abs(float(ct.std(unbiased=False)) - 1) < 1e-4
    mr = ModalityNormalized("image", modality="MR", modality_key=None)({"image": raw.clone(), "modality": "CT"})
    assert not torch.allclose(mr["image"], ct)  # percentile clip, not the HU window
    default = ModalityNormalized("image", modality="MR")({"image": raw.clone()})["image"]
    assert torch.equal(default, mr["image"])


def test_unknown_modality_is_rejected():
    x = torch.rand(1, 8, 8, 8)
    with pytest.raises(ValueError, match="unknown modality"):
        ModalityNormalized("image")({"image": x, "modality": "US"})
    with pytest.raises(ValueError, match="unknown modality"):
        ModalityNormalize("T1")
    assert resolve_modality("mri") == "MRI" and resolve_modality(None, x - 1000) == "CT"


@pytest.mark.parametrize(
    ("name", "declared", "warned"),
    [("head_ct", "MR", "Hounsfield air, a CT"), ("colin27_t1", "CT", "not a CT"), ("colin27_t1", "MR", None)],
)
def test_an_input_that_does_not_fit_the_declared_modality_is_named_in_a_warning(
    demo_data, caplog, name, declared, warned
):
    """A CT sent to an MR model (or the reverse) is normalised as declared, with one warning naming the file."""
    from monai.transforms import Compose

    from components.data.preprocessing import preprocessing

    path = demo_data / f"{name}.nii.gz"
    with caplog.at_level("WARNING", logger="mass.data"):
        Compose(preprocessing(["image"], spacing=(4.0, 4.0, 4.0), modality=declared))({"image": str(path)})
    lines = [r.getMessage() for r in caplog.records if "do not fit modality" in r.getMessage()]
    if warned is None:
        assert not lines, lines
    else:
        assert len(lines) == 1 and lines[0].startswith(f"{path}: ") and warned in lines[0], lines
