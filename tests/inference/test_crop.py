"""Reference cropping: window centred on the labels, kept inside, padded; the dict transform."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from components.inference.crop import CropReferenced, crop_reference, reference_window


def test_crop_reference_centres_on_the_label():
    image = torch.arange(100 * 90 * 80, dtype=torch.float32).view(1, 100, 90, 80)
    mask = torch.zeros(2, 100, 90, 80)
    mask[0, 40:50, 30:36, 20:30] = 1
    mask[1, 52:60, 34:40, 22:26] = 1
    img, msk = crop_reference(image, mask, 32)
    assert img.shape == (1, 32, 32, 32) and msk.shape == (2, 32, 32, 32)
    assert msk.sum((1, 2, 3)).tolist() == mask.sum((1, 2, 3)).tolist()  # both labels kept whole
    # the union bounding box (40:60, 30:40, 20:30) sits in the middle of the window
    coords = torch.nonzero(msk.amax(0))
    lo, hi = coords.min(0).values, coords.max(0).values + 1
    assert ((lo + hi) / 2 - 16).abs().max() <= 0.5
    # the crop is the image itself at the matching place (no resampling, no padding)
    start = [int(i) for i in (torch.tensor([40, 30, 20]) - lo)]
    torch.testing.assert_close(
        img, image[:, start[0] : start[0] + 32, start[1] : start[1] + 32, start[2] : start[2] + 32]
    )


def test_crop_reference_stays_inside_and_pads_small_volumes():
    image = torch.randn(1, 70, 20, 24)
    label = torch.zeros(1, 70, 20, 24, dtype=torch.int64)
    label[0, 66:70, 5:9, 3:6] = 2  # at the end of dim 0
    label[0, 60:62, 10:12, 10:12] = 5
    img, msk = crop_reference(image, label, (32, 32, 32), labels=[2, 5])
    assert img.shape == (1, 32, 32, 32) and msk.shape == (2, 32, 32, 32)
    assert msk[0].sum() == 48 and msk[1].sum() == 8
    # dim 0 is long enough: window shifted inside (ends at 70), real data only
    torch.testing.assert_close(img[0, :, 6:26, 4:28], image[0, 38:70])
    # dims 1, 2 are padded symmetrically with the image minimum; masks with 0
    assert (img[0, :, :6] == image.min()).all() and (img[0, :, 26:] == image.min()).all()
    assert (img[0, :, :, :4] == image.min()).all() and msk[:, :, :6].sum() == 0
    with pytest.raises(ValueError, match="empty"):
        crop_reference(image, label, 32, labels=[3])


def test_crop_reference_on_a_real_brain_label(demo_data):
    nib = pytest.importorskip("nibabel")
    image = torch.as_tensor(nib.load(demo_data / "colin27_t1.nii.gz").get_fdata(), dtype=torch.float32)[None]
    seg = torch.as_tensor(nib.load(demo_data / "colin27_seg.nii.gz").get_fdata(), dtype=torch.int64)[None]
    # a compact structure (>= 500 voxels) at least half a window away from every volume border
    from scipy.ndimage import find_objects

    counts = torch.bincount(seg.flatten())
    size = torch.tensor(seg.shape[1:])

    def usable(i: int, box: tuple[slice, ...] | None) -> bool:
        if i == 0 or box is None or counts[i] < 500:
            return False
        lo, hi = torch.tensor([b.start for b in box]), torch.tensor([b.stop for b in box])
        centre = (lo + hi) / 2
        return bool((hi - lo).max() < 64 and (centre >= 32).all() and (size - centre >= 32).all())

    boxes = find_objects(seg[0].numpy())
    label = next(i + 1 for i, b in enumerate(boxes) if usable(i + 1, b))
    img, msk = crop_reference(image, seg, 64, labels=[label])
    assert img.shape == (1, 64, 64, 64) and msk.shape == (1, 64, 64, 64)
    assert msk.sum().item() == (seg == label).sum().item()  # the whole structure is inside
    coords = torch.nonzero(msk[0])
    centre = (coords.min(0).values + coords.max(0).values + 1) / 2
    assert (centre - 32).abs().max().item() <= 0.5
    # the image crop holds the real intensities around it (the brain, not padding)
    assert img.std() > 0.1 * image.std()


def test_window_arithmetic():
    mask = torch.zeros(1, 100, 10, 33)
    mask[0, 95:100, 2:4, 10:13] = 1
    start, extent = reference_window(mask, (32, 32, 16))
    # dim 0: centred at 97.5 -> shifted inside (68..100); dim 1: whole volume (10 < 32); dim 2: centred at 11.5
    assert start == (68, 0, 4) and extent == (32, 10, 16)
    with pytest.raises(ValueError, match=r"channel\(s\) \[0\] are empty"):
        reference_window(torch.zeros(1, 8, 8, 8), 8)


def test_crop_referenced_uses_every_label_id_present():
    image = MetaTensor(torch.randn(1, 40, 40, 40), meta={"filename_or_obj": "ref.nii.gz"})
    label = torch.zeros(1, 40, 40, 40)
    label[0, 10:14, 10:14, 10:14] = 7
    label[0, 20:22, 20:22, 20:22] = 3
    d = CropReferenced(roi_size=(32, 32, 32))({"ref_image": image, "ref_label": label})
    assert d["label_ids"].tolist() == [3, 7]
    assert d["ref_image"].shape == (1, 32, 32, 32) and d["ref_masks"].shape == (2, 32, 32, 32)
    assert d["ref_masks"].sum((1, 2, 3)).tolist() == [8, 64]
    assert type(d["ref_image"]) is torch.Tensor  # a plain crop, not the volume's metadata
    only = CropReferenced(roi_size=(32, 32, 32), labels=[7])({"ref_image": image, "ref_label": label})
    assert only["label_ids"].tolist() == [7] and only["ref_masks"].shape[0] == 1
    with pytest.raises(ValueError, match="reference mask is empty"):
        CropReferenced(roi_size=(32, 32, 32))({"ref_image": image, "ref_label": torch.zeros_like(label)})
