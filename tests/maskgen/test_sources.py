"""Mask sources (SLIC, label map), intensity mapping, slice plan, post-processing and the quality tool
on the real volumes of the shared data pack."""

from __future__ import annotations

import json

import fire
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from components.data.loading import load_transforms
from components.io.maskset import MaskSet, SparseMask, write_maskset
from components.maskgen.postprocess import MaskPostprocessd, largest_cc_touching, remove_redundant, scaled_min_size
from components.maskgen.quality import dice_table, evaluate_maskset, main, quality_summary
from components.maskgen.sam2.intensity import SAM2Intensity
from components.maskgen.slices import SeedSlicesd, seed_slices, select_slice_axis
from components.maskgen.sources import LabelMapMasks, LabelMapMasksd, SLICMasksd


@pytest.fixture(scope="module")
def colin4mm(shared_data) -> dict:
    mri = shared_data / "mri"
    load = Compose(load_transforms(("image", "label"), spacing=(4.0, 4.0, 4.0)))
    return load({"image": str(mri / "colin27_t1.nii.gz"), "label": str(mri / "colin27_samseg.nii.gz")})


@pytest.fixture(scope="module")
def itk(shared_data) -> dict:
    mri = shared_data / "mri"
    return Compose(load_transforms(("image", "label")))(
        {"image": str(mri / "itk_t1.nii.gz"), "label": str(mri / "itk_samseg.nii.gz")}
    )


def test_slic_multiscale_on_real_mri(colin4mm, tmp_path):
    d = SLICMasksd(n_segments=(20, 80, 320), compactness=0.1)(colin4mm)
    scales = [p["n_segments"] for p in d["mask_provenance"]]
    counts = [scales.count(k) for k in (20, 80, 320)]
    assert counts[0] < counts[1] < counts[2] and counts[0] >= 5, counts
    shape = tuple(colin4mm["image"].shape[1:])
    cover = np.zeros(shape, np.int32)
    for m, p in zip(d["masks"], d["mask_provenance"]):
        if p["n_segments"] == 80:
            cover[m.bbox[0] : m.bbox[3], m.bbox[1] : m.bbox[4], m.bbox[2] : m.bbox[5]] += m.crop
    assert cover.max() == 1  # supervoxels of one scale do not overlap
    head = np.asarray(colin4mm["image"])[0] > 0
    assert cover.sum() > 0.5 * head.sum() and (cover.astype(bool) & ~head).sum() < 0.05 * cover.sum()
    out = tmp_path / "colin.mset"
    write_maskset(out, d["masks"], np.asarray(colin4mm["image"].affine), d["mask_provenance"], shape=shape)
    q = evaluate_maskset(out, np.asarray(colin4mm["label"])[0])
    best = {r["label"]: r["best_dice"] for r in q["per_label"]}
    assert best[16] > 0.5  # brain stem is recovered by some supervoxel even at 4 mm
    assert 0 < q["mean_dice_overlapping"] < q["mean_best_dice"] <= 1


def test_labelmap_source_is_exact_on_ras_grid(itk, tmp_path):
    d = LabelMapMasksd()(itk)
    lab = np.rint(np.asarray(itk["label"])[0]).astype(int)
    ids = sorted(int(i) for i in np.unique(lab) if i > 0)
    assert [p["label"] for p in d["mask_provenance"]] == ids
    out = tmp_path / "itk.mset"
    write_maskset(out, d["masks"], np.asarray(itk["image"].affine), d["mask_provenance"], shape=lab.shape)
    ms = MaskSet.open(out)
    for k in (0, len(ms) // 2, len(ms) - 1):
        assert np.array_equal(ms.get(k), lab == ids[k])
    # the quality tool reads the label file itself (LSA on disk) and must find every label exactly
    q = evaluate_maskset(out, itk["label"].meta["filename_or_obj"])
    assert q["share_labels_with_mask_at_threshold"] == 1.0 and min(r["best_dice"] for r in q["per_label"]) == 1.0
    cc = LabelMapMasksd(connected_components=True, min_voxels=1)(itk)
    assert len(cc["masks"]) >= len(d["masks"]) and all("component" in p for p in cc["mask_provenance"])


def test_sources_take_keys_like_monai_dictionary_transforms(itk):
    """The dictionary sources read the keys they are given, equal their array forms, name a missing key, and
    the post-processing works on the masks key it is given."""
    masks, prov = LabelMapMasks()(itk["label"])
    d = LabelMapMasksd(keys="seg", masks_key="found", provenance_key="found_prov")({"seg": itk["label"]})
    assert [m.bbox for m in d["found"]] == [m.bbox for m in masks] and d["found_prov"] == prov
    with pytest.raises(KeyError, match="seg"):
        LabelMapMasksd(keys="seg")({"label": itk["label"]})
    assert LabelMapMasksd(keys="seg", allow_missing_keys=True)({"label": itk["label"]})["masks"] == []
    post = MaskPostprocessd(keys="found", provenance_key="found_prov", min_voxels=1, reference_spacing=(1, 1, 1))
    out = post({**d, "image": itk["image"]})
    assert 0 < len(out["found"]) <= len(masks) and len(out["found_prov"]) == len(out["found"])
    with pytest.raises(ValueError, match="one masks key"):
        MaskPostprocessd(keys=("a", "b"))


def test_quality_cli(itk, tmp_path, capsys):
    d = LabelMapMasksd()(itk)
    out = tmp_path / "itk.mset"
    write_maskset(
        out,
        d["masks"][:5],
        np.asarray(itk["image"].affine),
        d["mask_provenance"][:5],
        shape=tuple(itk["image"].shape[1:]),
    )
    res = tmp_path / "q.json"
    # the command line of `python -m components.maskgen.quality` (fire), run in-process
    args = ["--maskset", str(out), "--label", itk["label"].meta["filename_or_obj"], "--out", str(res), "--top", "3"]
    results = fire.Fire(main, command=args, serialize=lambda _: None)
    assert len(results) == 1
    assert "best Dice" in capsys.readouterr().out
    q = json.loads(res.read_text())[0]
    assert q["n_masks"] == 5 and q["per_label"][0]["best_dice"] == 1.0
    assert q["share_labels_with_mask_at_threshold"] == pytest.approx(5 / q["n_labels"])


def test_ct_windows_and_mr_percentiles(shared_data, colin4mm):
    hu = torch.tensor([-1000.0, -600.0, 60.0, 300.0, 2000.0]).view(1, 5, 1, 1)
    rgb = SAM2Intensity(modality="CT", profile="abdomen")(hu)
    assert rgb.shape == (3, 5, 1, 1)
    assert rgb[0, 2].item() == pytest.approx(127.5)  # abdomen soft-tissue window centre 60 HU
    assert rgb[:, 0].max() == 0 and rgb[:, -1].min() == 255
    chest = SAM2Intensity(modality="CT", profile="chest")(hu)
    assert chest[0, 1].item() == pytest.approx(127.5)  # lung window centre -600 HU
    user = SAM2Intensity(modality="CT", windows=[(100, 400)] * 3)(hu)
    assert user[0, 2].item() == pytest.approx(0.4 * 255)
    lin = SAM2Intensity(modality="CT", mode="linear")(hu)
    single = SAM2Intensity(modality="CT", mode="single_window")(hu)
    assert torch.equal(lin[0], lin[1]) and torch.equal(single[0], single[2])
    mr = SAM2Intensity(modality="MR")(colin4mm["image"])
    head = np.asarray(colin4mm["image"])[0] > 20
    # inside the head the 15-85 channel saturates more than the 1-99 channel
    sat = [(np.asarray(mr[c])[head] >= 255).mean() for c in range(3)]
    assert sat[1] > sat[0] > sat[2] > 0
    with pytest.raises(ValueError, match="unknown CT window profile"):
        SAM2Intensity(profile="knee")


def test_axis_selection_and_seed_slices():
    assert select_slice_axis((0.7, 0.7, 5.0)) == 2
    assert select_slice_axis((3.0, 0.8, 0.8)) == 0
    assert select_slice_axis((1.0, 1.0, 1.2)) == 2  # near-isotropic: default axis
    assert select_slice_axis((1.0, 1.0, 1.2), default_axis=0) == 0
    s = seed_slices(100, 1.0, interval_mm=15.0, min_seeds=3)
    assert np.all(np.diff(s) == 15) and len(s) == 7
    assert (
        seed_slices(20, 5.0, interval_mm=30.0, min_seeds=10) == list(range(1, 19, 2))[:9]
        or len(seed_slices(20, 5.0, interval_mm=30.0, min_seeds=10)) == 10
    )
    assert len(seed_slices(20, 5.0, interval_mm=30.0, min_seeds=10)) == 10
    assert seed_slices(8, 1.0, interval_mm=30.0, min_seeds=10) == list(range(8))
    assert all(30 <= x < 60 for x in seed_slices(100, 1.0, 10.0, 1, extent=(30, 60)))
    img = MetaTensor(torch.zeros(1, 50, 60, 12), affine=torch.diag(torch.tensor([0.8, 0.8, 5.0, 1.0])))
    plan = SeedSlicesd("image", interval_mm=15.0, min_seeds=2)({"image": img})["slice_plan"]
    assert len(plan) == 1 and plan[0]["axis"] == 2 and plan[0]["seeds"] == [1, 4, 7, 10]
    body = torch.zeros(1, 20, 20, 40)
    body[:, 5:15, 5:15, 10:30] = 100  # seeds stay inside the foreground extent (z 10..29)
    fgp = SeedSlicesd("image", interval_mm=5.0, min_seeds=2, foreground="otsu")(
        {"image": MetaTensor(body, affine=torch.eye(4))}
    )["slice_plan"]
    assert fgp[0]["seeds"] == [12, 17, 22, 27]
    plan3 = SeedSlicesd("image", multi_axis=True)({"image": img})["slice_plan"]
    assert [p["axis"] for p in plan3] == [0, 1, 2]


def test_postprocessing_components_and_dedup():
    crop = np.zeros((10, 10, 10), bool)
    crop[0:3, 0:3, 0:10] = True  # touches every z slice
    crop[6:10, 6:10, 6:10] = True  # larger component, only z 6..9
    sp = SparseMask((0, 0, 0, 10, 10, 10), crop)
    kept = largest_cc_touching(sp, axis=2, seed=2)
    assert kept.crop.sum() == 90 and kept.bbox == (0, 0, 0, 3, 3, 10)
    assert largest_cc_touching(sp).crop.sum() == 90 or largest_cc_touching(sp).crop.sum() == 64
    assert largest_cc_touching(sp, axis=2, seed=12) is None
    a = SparseMask((0, 0, 0, 10, 10, 10), np.ones((10, 10, 10), bool))
    b = SparseMask((0, 0, 0, 10, 10, 9), np.ones((10, 10, 9), bool))  # IoU 0.9 with a
    c = SparseMask((20, 20, 20, 22, 22, 22), np.ones((2, 2, 2), bool))
    assert remove_redundant([b, a, c], iou_thresh=0.95) == [1, 0, 2]
    assert remove_redundant([b, a, c], iou_thresh=0.9) == [1, 2]
    assert scaled_min_size(1000, (1.5, 1.5, 3.0), (0.75, 0.75, 3.0)) == 250
    img = MetaTensor(torch.zeros(1, 30, 30, 30), affine=torch.eye(4))
    d = {"image": img, "masks": [b, a, c], "mask_provenance": [{"source": "x"}] * 3}
    out = MaskPostprocessd(min_voxels=10, reference_spacing=(1, 1, 1), iou_thresh=0.9)(d)
    assert len(out["masks"]) == 1 and out["postprocess_stats"] == {
        "n_in": 3,
        "n_after_size": 2,
        "n_out": 1,
        "min_voxels": 10,
    }


def test_dice_table_matches_direct_computation():
    lab = np.zeros((8, 8, 8), int)
    lab[:4] = 1
    lab[4:, :4] = 2
    m = np.zeros((8, 8, 8), bool)
    m[:4, :4] = True

    class _MS:  # minimal stand-in exposing the reader API used by dice_table
        shape, path = (8, 8, 8), "mem"

        def __len__(self):
            return 1

        def crop(self, i):
            return (0, 0, 0, 8, 8, 8), m

    dice, ids = dice_table(_MS(), lab)
    assert ids == [1, 2]
    assert dice[0, 0] == pytest.approx(2 * 128 / (128 + 256)) and dice[0, 1] == 0
    s = quality_summary(dice, ids)
    assert s["share_labels_with_mask_at_threshold"] == 0.5 and s["n_masks"] == 1
