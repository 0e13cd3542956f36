"""Two-view sampling for pretraining: geometry of the joint spatial transform, image-only appearance
augmentation, mask selection, caching, padding, skipping and per-rank sample ids."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import components.pretrain.volumes as pvolumes
from components.io.maskset import MaskSet, write_maskset
from components.pretrain.dataset import MaskPretrainDataset
from components.pretrain.sampler import TwoViewSampler
from components.pretrain.views import TwoViewAugment, pack_masks, unpack_masks, view_params
from components.pretrain.volumes import pair_masksets
from tests.pretrain._util import DEMO, masksets_from_labels

torch.set_num_threads(1)


def _warp_nearest(src: np.ndarray, matrix: np.ndarray, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``src[N, C, C, C]`` at ``M @ (j - c_out) + c_in`` (nearest); also a mask of voxels away from ties."""
    c_in = (np.asarray(src.shape[1:]) - 1) / 2.0
    j = np.stack(np.meshgrid(*[np.arange(out)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(float)
    pos = (j - (out - 1) / 2.0) @ matrix[:3, :3].T + matrix[:3, 3] + c_in
    r = np.rint(pos).astype(int)
    inside = np.all((r >= 0) & (r < np.asarray(src.shape[1:])), 1)
    vals = np.zeros((src.shape[0], len(j)), src.dtype)
    vals[:, inside] = src[:, r[inside, 0], r[inside, 1], r[inside, 2]]
    clear = np.abs(pos - np.floor(pos) - 0.5).min(1) > 1e-3  # not at a rounding tie
    return vals.reshape(src.shape[0], out, out, out), clear.reshape(out, out, out)


def _blob_masks(c: int, n: int, seed: int = 0) -> torch.Tensor:
    g = np.random.default_rng(seed)
    zz = np.stack(np.meshgrid(*[np.arange(c)] * 3, indexing="ij"), -1)
    out = []
    for _ in range(n):
        centre, rad = g.uniform(8, c - 8, 3), g.uniform(4, 10)
        out.append(np.linalg.norm(zz - centre, axis=-1) < rad)
    return torch.from_numpy(np.stack(out))


def test_pack_unpack_roundtrip_many_masks():
    m = torch.rand(30, 5, 6, 7) > 0.5
    assert torch.equal(unpack_masks(pack_masks(m), 30), m)


def test_joint_spatial_transform_moves_masks_with_the_image():
    c, crop = 40, 24
    img = torch.randn(1, c, c, c)
    masks = _blob_masks(c, 5)
    aug = TwoViewAugment(
        crop_size=(crop,) * 3, appearance=False, weak={"affine_prob": 1.0}, strong={"affine_prob": 1.0}
    )
    for seed in range(3):
        out = aug.set_random_state(seed)(img, masks, img, masks)
        for view in ("ref", "query"):
            m = out[f"{view}_affine"].numpy()
            assert not np.allclose(m, np.eye(4))  # a real random affine was applied
            expect, clear = _warp_nearest(masks.numpy(), m, crop)
            got = out[f"{view}_masks"].numpy()
            assert got.shape == (5, crop, crop, crop)
            assert np.array_equal(got[:, clear], expect[:, clear])
            assert got.any()
            # the image went through the same warp: nearest sample of the image agrees with bilinear
            # output where the intensity is locally constant (inside the masks it is not; compare means)
            ev, _ = _warp_nearest(masks.numpy().astype(np.float32), m, crop)
            assert np.array_equal(ev > 0.5, expect)


def test_appearance_never_touches_masks():
    c, crop = 40, 24
    img = torch.randn(1, c, c, c)
    masks = _blob_masks(c, 4, seed=1)
    on = TwoViewAugment(crop_size=(crop,) * 3, weak={"aug_prob": 1.0}, strong={"aug_prob": 1.0})
    off = TwoViewAugment(crop_size=(crop,) * 3, appearance=False)
    for seed in range(3):
        a = on.set_random_state(seed)(img, masks, img, masks)
        b = off.set_random_state(seed)(img, masks, img, masks)
        for view in ("ref", "query"):
            assert torch.equal(a[f"{view}_masks"], b[f"{view}_masks"])
            assert torch.equal(a[f"{view}_affine"], b[f"{view}_affine"])
            assert not torch.allclose(a[f"{view}_image"], b[f"{view}_image"])


def test_ablation_presets_are_overrides():
    small, large = view_params("strong", "small"), view_params("strong", "large")
    assert small["rotate"] == pytest.approx(15.0) and large["rotate"] == pytest.approx(45.0)
    assert small["gamma"] == pytest.approx((0.9, 1.15))
    assert view_params("strong", spatial=False)["affine_prob"] == 0.0
    assert view_params("weak", appearance=False)["aug_prob"] == 0.0
    assert view_params("strong", overrides={"affine_prob": 0.3})["affine_prob"] == 0.3
    with pytest.raises(ValueError, match="unknown augmentation"):
        view_params("strong", overrides={"rotation": 1})


@pytest.fixture(scope="module")
def demo_masks(tmp_path_factory):
    return masksets_from_labels(tmp_path_factory.mktemp("masks"))


@pytest.fixture(scope="module")
def dataset(demo_masks, tmp_path_factory):
    data = pair_masksets([{"image": str(DEMO / "colin27_t1.nii.gz"), "modality": "MR"}], demo_masks)
    return MaskPretrainDataset(
        data,
        tmp_path_factory.mktemp("cache"),
        spacing=(3.0, 3.0, 3.0),
        crop_size=(32, 32, 32),
        context_margin=8,
        max_masks=6,
        augment={"weak": {"affine_prob": 1.0}},
        sampling="visible",
        ones_mask_prob=0.0,
    )


def test_release_sampling_draws_from_all_masks_with_one_whole_window_channel(dataset, demo_masks, tmp_path):
    """Release mode: min(M, n) channels, all valid (empty targets included), one all-foreground channel."""
    data = pair_masksets([{"image": str(DEMO / "colin27_t1.nii.gz"), "modality": "MR"}], demo_masks)
    cache = dataset.volumes[0]["image_npy"].rsplit("/", 2)[0]
    common = dict(spacing=(3.0, 3.0, 3.0), crop_size=(32, 32, 32), context_margin=8, max_masks=6)
    release = MaskPretrainDataset(data, cache, augment={"spatial": False, "appearance": False}, **common)
    assert release.sampling == "release" and release.ones_mask_prob == 1.0  # the defaults, as released
    empty_seen = 0
    for index in range(12):
        s = release[index]
        assert s["valid"].all()  # the volume has far more than 6 masks
        full = s["ref_masks"].flatten(1).all(1) & s["query_masks"].flatten(1).all(1)
        assert int(full.sum()) >= 1  # the whole-window task (without a warp it fills both windows)
        empty_seen += int((s["query_masks"].flatten(1).sum(1) == 0).sum())
    assert empty_seen > 0  # masks are not required to be visible: empty target channels occur
    plain = MaskPretrainDataset(
        data, cache, augment={"spatial": False, "appearance": False}, ones_mask_prob=0.0, **common
    )
    assert not any(bool(plain[i]["ref_masks"].flatten(1).all(1).any()) for i in range(6))
    with pytest.raises(ValueError, match="sampling"):
        MaskPretrainDataset(data, cache, sampling="anchor", **common)


def test_sample_views_share_mask_geometry_on_real_volume(dataset):
    info = dataset.volumes[0]
    ms = MaskSet.open(info["masks"])
    for index in range(3):
        s = dataset[index]
        assert s["query_image"].shape == (1, 32, 32, 32) and s["ref_masks"].shape == (6, 32, 32, 32)
        assert s["valid"].any() and s["ref_masks"][s["valid"]].flatten(1).sum(1).min() >= 8
        ctx = 40
        # masks of the sample = volume masks cut at the recorded box and warped with the recorded matrix
        full = ms.get_many(info["usable"])  # [K, X, Y, Z] on the cached grid
        warped_views = {}
        for view in ("ref", "query"):
            start = s[f"{view}_box"].numpy()
            box = np.zeros((len(full), ctx, ctx, ctx), bool)
            lo, hi = np.maximum(start, 0), np.minimum(start + ctx, full.shape[1:])
            box[
                :,
                lo[0] - start[0] : hi[0] - start[0],
                lo[1] - start[1] : hi[1] - start[1],
                lo[2] - start[2] : hi[2] - start[2],
            ] = full[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
            warped_views[view] = warped, clear = _warp_nearest(box, s[f"{view}_affine"].numpy(), 32)
            got = s[f"{view}_masks"].numpy()
            for k in np.flatnonzero(got.reshape(6, -1).any(1)):
                match = [np.array_equal(got[k][clear], w[clear]) for w in warped]
                assert any(match), f"sample {index} {view} mask {k} is not a warped volume mask"
        # the same mask slot holds the same volume mask in both views
        for k in np.flatnonzero(s["valid"].numpy()):
            if s["query_masks"][k].sum() < 20:
                continue
            ids = []
            for view in ("ref", "query"):
                warped, clear = warped_views[view]
                ids.append(
                    {i for i, w in enumerate(warped) if np.array_equal(s[f"{view}_masks"][k].numpy()[clear], w[clear])}
                )
            assert ids[0] & ids[1], f"slot {k} holds different masks in the two views"


def test_two_boxes_overlap_and_samples_are_reproducible(dataset):
    for index in range(5):
        s = dataset[index]
        d = np.abs(s["ref_box"].numpy() - s["query_box"].numpy())
        assert np.all(40 - d >= np.ceil(0.67 * 40) - 1)
    a, b = dataset[7], dataset[7]
    assert torch.equal(a["query_image"], b["query_image"]) and torch.equal(a["ref_masks"], b["ref_masks"])
    assert not torch.equal(dataset[8]["query_image"], a["query_image"])


def test_cache_is_reused_without_resampling(dataset, demo_masks, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("volume re-read although cached")

    monkeypatch.setattr(pvolumes, "load_volume", boom)
    data = pair_masksets([{"image": str(DEMO / "colin27_t1.nii.gz"), "modality": "MR"}], demo_masks)
    cache = dataset.volumes[0]["image_npy"].rsplit("/", 2)[0]
    again = MaskPretrainDataset(
        data, cache, spacing=(3.0, 3.0, 3.0), crop_size=(32, 32, 32), context_margin=8, max_masks=6
    )
    assert again.volumes[0]["image_npy"] == dataset.volumes[0]["image_npy"]
    assert isinstance(np.load(again.volumes[0]["image_npy"], mmap_mode="r"), np.memmap)


def test_small_volume_is_padded_and_bad_entries_are_skipped(tmp_path):
    import nibabel as nib

    img = np.random.default_rng(0).normal(100, 10, (20, 18, 16)).astype(np.float32)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(img, aff), tmp_path / "small.nii.gz")
    m = np.zeros(img.shape, bool)
    m[5:12, 4:10, 3:9] = True
    write_maskset(tmp_path / "small.mset", [m], aff)
    write_maskset(tmp_path / "wrong.mset", [np.ones((5, 5, 5), bool)], aff)
    nib.save(nib.Nifti1Image(img, aff), tmp_path / "wrong.nii.gz")
    write_maskset(tmp_path / "tiny.mset", [np.pad(np.ones((1, 1, 1), bool), ((3, 16), (3, 14), (3, 12)))], aff)
    nib.save(nib.Nifti1Image(img, aff), tmp_path / "tiny.nii.gz")
    data = [
        {"image": str(tmp_path / f"{n}.nii.gz"), "masks": str(tmp_path / f"{n}.mset")}
        for n in ("small", "wrong", "tiny")
    ]
    data.append({"image": str(tmp_path / "missing.nii.gz"), "masks": None})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ds = MaskPretrainDataset(
            data, tmp_path / "cache", spacing=(2.0, 2.0, 2.0), crop_size=(32, 32, 32), context_margin=8, max_masks=3
        )
    text = " ".join(str(x.message) for x in w)
    assert "wrong.mset" in text and "does not match" in text
    assert "tiny.nii.gz: no usable masks" in text and "missing.nii.gz" in text
    assert len(ds.volumes) == 1
    s = ds[0]
    assert s["query_image"].shape == (1, 32, 32, 32) and s["valid"].tolist() == [True, False, False]
    assert s["ref_masks"][0].sum() > 0


def test_sampler_gives_each_rank_different_ids_every_epoch(dataset):
    a, b = TwoViewSampler(dataset, 8, num_replicas=2, rank=0), TwoViewSampler(dataset, 8, num_replicas=2, rank=1)
    e1 = (list(a), list(b))
    assert len(e1[0]) == 4 and not set(e1[0]) & set(e1[1])
    a.set_epoch(2)
    assert not set(a) & set(e1[0])
    a.skip = 3
    assert list(a) == [8 + 6]


def test_pretrain_split_holds_out_named_volumes_or_the_last(tmp_path):
    from components.checks.errors import InputError
    from components.pretrain.volumes import pretrain_split

    masks = masksets_from_labels(tmp_path / "masks", max_ids=2)
    (tmp_path / "data").mkdir()
    for n in ("colin27", "mni152"):
        (tmp_path / "data" / f"{n}_t1.nii.gz").symlink_to(DEMO / f"{n}_t1.nii.gz")
    default = pretrain_split(tmp_path / "data", masks)
    assert [d["image"].split("/")[-1] for d in default["val"]] == ["mni152_t1.nii.gz"]
    assert [d["image"].split("/")[-1] for d in default["train"]] == ["colin27_t1.nii.gz"]
    named = pretrain_split(tmp_path / "data", masks, val_names=["colin27_t1"])
    assert [d["image"].split("/")[-1] for d in named["val"]] == ["colin27_t1.nii.gz"]
    assert pretrain_split(tmp_path / "data", masks, val_names=[])["val"] == []
    with pytest.raises(InputError, match="brain_9"):
        pretrain_split(tmp_path / "data", masks, val_names=["brain_9"])
