"""Checked loading of real and broken volumes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, Spacingd

from components.checks.errors import VolumeError, volume_error_of
from components.data.loading import CheckVolumed, load_transforms, load_volume


def _load_pair(item: dict) -> dict:
    """Run the loading chain through MONAI's Compose and surface the VolumeError it wraps."""
    try:
        return Compose(load_transforms(tuple(item)))(item)
    except RuntimeError as e:
        err = volume_error_of(e)
        if err is None:
            raise
        raise err from None


def _nifti(path: Path, arr: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))
    return path


# ---------------------------------------------------------------- real files


def test_real_pair_loads_to_ras_and_resamples(shared_data: Path) -> None:
    """The LSA ITK T1 and its labels come out RAS, 3 mm, on one grid, labels still integer ids."""
    item = {"image": str(shared_data / "mri/itk_t1.nii.gz"), "label": str(shared_data / "mri/itk_samseg.nii.gz")}
    d = Compose(load_transforms(("image", "label"), spacing=(3.0, 3.0, 3.0)))(item)
    img, lab = d["image"], d["label"]
    assert img.shape == lab.shape and img.shape[0] == 1
    assert nib.aff2axcodes(img.affine.numpy()) == ("R", "A", "S")
    assert np.allclose(np.abs(np.diag(img.affine.numpy())[:3]), 3.0)
    # 128x128x62 at 2x2x3 mm -> about 85x62x85 voxels at 3 mm (axes permuted LSA -> RAS)
    assert abs(img.shape[1] - 128 * 2 / 3) <= 2 and abs(img.shape[2] - 62) <= 2 and abs(img.shape[3] - 128 * 2 / 3) <= 2
    ids = set(np.unique(lab.numpy()).astype(int).tolist())
    known = {int(k) for k in json.loads((shared_data / "labels_samseg.json").read_text())}
    assert {0, 4, 10, 16, 17} <= ids <= known


def test_real_ct_keeps_hounsfield_units(shared_data: Path) -> None:
    img = load_volume(shared_data / "ct/lung1_ct.nii.gz")
    assert tuple(img.shape) == (1, 512, 512, 48)
    assert float(img.min()) == -1024.0 and float(img.max()) == 3071.0
    assert nib.aff2axcodes(img.affine.numpy()) == ("R", "A", "S")


def test_nrrd_and_nifti_give_same_voxels(shared_data: Path, tmp_path: Path) -> None:
    import itk

    src = shared_data / "mri/itk_t1.nii.gz"
    nrrd = tmp_path / "itk_t1.nrrd"
    itk.imwrite(itk.imread(str(src)), str(nrrd))
    a, b = load_volume(src), load_volume(nrrd)
    assert a.shape == b.shape
    assert np.array_equal(a.numpy(), b.numpy())
    assert np.allclose(a.affine.numpy(), b.affine.numpy(), atol=1e-4)


def test_dicom_series_folder_loads(shared_data: Path, tmp_path: Path) -> None:
    import itk

    arr = (np.arange(24 * 20 * 6, dtype=np.int16).reshape(6, 20, 24) % 251).astype(np.int16)  # [z, y, x]
    img = itk.image_from_array(arr)
    img.SetSpacing((2.0, 2.0, 3.0))
    series = tmp_path / "series"
    series.mkdir()
    names = [str(series / f"slice{i:03d}.dcm") for i in range(arr.shape[0])]
    writer = itk.ImageSeriesWriter[type(img), itk.Image[itk.SS, 2]].New(Input=img, FileNames=names)
    writer.SetImageIO(itk.GDCMImageIO.New())
    writer.Update()
    vol = load_volume(series)
    assert vol.shape[0] == 1 and sorted(vol.shape[1:]) == [6, 20, 24]
    assert np.array_equal(np.sort(vol.numpy().ravel()), np.sort(arr.ravel().astype(np.float32)))


# ---------------------------------------------------------------- broken inputs


def test_truncated_gzip_names_file(tmp_path: Path, demo_data: Path) -> None:
    raw = (demo_data / "mni152_t1.nii.gz").read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(VolumeError, match=r"truncated\.nii\.gz: cannot be read as a volume"):
        load_volume(bad)


def test_not_gzip_at_all(tmp_path: Path) -> None:
    bad = tmp_path / "text.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not a nifti header"))
    with pytest.raises(VolumeError, match=r"text\.nii\.gz: cannot be read as a volume"):
        load_volume(bad)


def test_2d_image_rejected(tmp_path: Path) -> None:
    p = _nifti(tmp_path / "slice.nii.gz", np.random.rand(32, 32).astype(np.float32))
    with pytest.raises(VolumeError, match=r"slice\.nii\.gz: is a 2D image \(shape \(32, 32\)\)"):
        load_volume(p)


def test_4d_image_rejected(tmp_path: Path) -> None:
    p = _nifti(tmp_path / "dwi.nii.gz", np.random.rand(16, 16, 8, 5).astype(np.float32))
    with pytest.raises(VolumeError, match=r"dwi\.nii\.gz: is 4D or multi-channel \(5 volumes of \(16, 16, 8\)\)"):
        load_volume(p)


def test_all_nan_rejected_partial_nan_repaired(tmp_path: Path) -> None:
    p = _nifti(tmp_path / "nan.nii.gz", np.full((8, 8, 8), np.nan, np.float32))
    with pytest.raises(VolumeError, match=r"nan\.nii\.gz: all voxels are NaN/inf"):
        load_volume(p)
    arr = np.arange(512, dtype=np.float32).reshape(8, 8, 8)
    arr[0, 0, :3] = np.nan
    p2 = _nifti(tmp_path / "somenan.nii.gz", arr)
    with pytest.warns(UserWarning, match="3 NaN/inf voxels replaced"):
        v = load_volume(p2)
    assert np.isfinite(v.numpy()).all() and float(v.min()) == 3.0


def test_constant_and_empty_rejected(tmp_path: Path) -> None:
    p = _nifti(tmp_path / "flat.nii.gz", np.full((8, 8, 8), 7, np.int16))
    assert load_volume(p).shape == (1, 8, 8, 8)  # allowed by default
    with pytest.raises(VolumeError, match=r"flat\.nii\.gz: has constant intensity \(7\.0\)"):
        load_volume(p, allow_constant=False)
    p0 = _nifti(tmp_path / "empty.nii.gz", np.zeros((8, 0, 8), np.float32))
    with pytest.raises(VolumeError, match=r"empty\.nii\.gz: is empty"):
        load_volume(p0)


def test_label_grid_mismatch_rejected(tmp_path: Path, demo_data: Path) -> None:
    item = {"image": str(demo_data / "colin27_t1.nii.gz"), "label": str(demo_data / "mni152_seg.nii.gz")}
    with pytest.raises(
        VolumeError, match=r"mni152_seg\.nii\.gz: grid \(77, 94, 80\) does not match image .*colin27_t1"
    ):
        _load_pair(item)
    # same shape, shifted origin: affine mismatch
    img = nib.load(demo_data / "colin27_t1.nii.gz")
    shifted = img.affine.copy()
    shifted[:3, 3] += 10
    lab = _nifti(tmp_path / "shifted_seg.nii.gz", np.zeros(img.shape, np.int16), shifted)
    with pytest.raises(VolumeError, match=r"shifted_seg\.nii\.gz: affine .* does not match image"):
        _load_pair({"image": str(demo_data / "colin27_t1.nii.gz"), "label": str(lab)})


def test_missing_file_in_transform(tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match=r"missing\.nii\.gz: file does not exist"):
        load_volume(tmp_path / "missing.nii.gz")


def test_check_volumed_one_bad_case_does_not_affect_others(tmp_path: Path, demo_data: Path) -> None:
    """A loop over a datalist can skip the bad case and keep going (the pattern every bundle uses)."""
    bad = _nifti(tmp_path / "bad2d.nii.gz", np.zeros((4, 4), np.float32))
    items = [
        {"image": str(demo_data / "itk_t1.nii.gz")},
        {"image": str(bad)},
        {"image": str(demo_data / "mni152_t1.nii.gz")},
    ]
    ok, errors = [], []
    for it in items:
        try:
            ok.append(_load_pair(it)["image"].shape)
        except VolumeError as e:
            errors.append(str(e))
    assert len(ok) == 2 and len(errors) == 1 and errors[0].startswith(str(bad))
    assert isinstance(CheckVolumed("image"), CheckVolumed)


def test_in_memory_volume_gives_the_file_result(demo_data: Path) -> None:
    """MONAI Deploy hands the bundle a MetaTensor without a channel ([X, Y, Z], original_channel_dim
    'no_channel'); the preprocessing must give exactly what it gives from the file."""
    from monai.data import MetaTensor
    from monai.transforms import Compose

    path = str(demo_data / "itk_t1.nii.gz")
    pre = Compose(load_transforms(("image",), spacing=(3.0, 3.0, 3.0)))
    from_file = pre({"image": path})["image"]
    raw = load_transforms(("image",))[0]({"image": path})["image"]
    meta = {k: v for k, v in raw.meta.items() if k != "original_channel_dim"}
    meta["original_channel_dim"] = "no_channel"
    from_memory = pre({"image": MetaTensor(raw[0].numpy().copy(), affine=raw.affine, meta=meta)})["image"]
    assert from_memory.shape == from_file.shape
    assert torch.equal(from_memory.as_tensor(), from_file.as_tensor())
    np.testing.assert_allclose(from_memory.affine, from_file.affine, atol=1e-6)
    plain = pre({"image": raw.numpy()})["image"]  # a channel-first array without metadata is used as is
    assert plain.shape[0] == 1


def test_bad_in_memory_volume_is_described_not_printed() -> None:
    with pytest.raises(VolumeError) as err:
        _load_pair({"image": np.zeros((3, 8, 8, 8, 2), np.float32)})
    message = str(err.value)
    assert "in-memory ndarray of shape (3, 8, 8, 8, 2)" in message and "0." not in message


def test_spacing_leaves_monai_label_path_entries_alone(demo_data: Path) -> None:
    """MONAI Label adds ``image_path`` (a string); MONAI 1.6's Spacingd would call .update() on it."""
    path = str(demo_data / "mni152_t1.nii.gz")
    out = Compose(load_transforms(("image",), spacing=(3.0, 3.0, 3.0)))({"image": path, "image_path": path})
    assert out["image_path"] == path and tuple(out["image"].shape[1:]) == (52, 63, 54)
    with pytest.raises(AttributeError, match="'str' object has no attribute 'update'"):  # MONAI's own Spacingd
        d: dict = {"image": path, "image_path": path}
        for t in [*load_transforms(("image",)), Spacingd("image", pixdim=(3.0, 3.0, 3.0))]:
            d = t(d)
