"""Masks or probabilities -> one label map: ids, overlaps, thresholds, metadata."""

from __future__ import annotations

import torch
from monai.data import MetaTensor

from components.inference.labels import LargestComponentPerMaskd, MasksToLabelMapd, masks_to_labelmap


def test_masks_to_labelmap_values_and_overlaps():
    masks = torch.zeros(3, 4, 4, 4, dtype=torch.uint8)
    masks[0, :2] = 1
    masks[1, 1:3] = 1  # overlaps mask 0 on slice 1
    masks[2, 3, 3, 3] = 1
    lab = masks_to_labelmap(masks)
    assert lab.shape == (1, 4, 4, 4) and lab.dtype == torch.uint8
    assert lab[0, 0].unique().tolist() == [1] and lab[0, 1].unique().tolist() == [2]  # the last mask wins
    assert lab[0, 3, 3, 3] == 3 and lab[0, 3, 0, 0] == 0
    probs = torch.zeros(3, 4, 4, 4)
    probs[0, 1], probs[1, 1] = 0.9, 0.6
    assert lab.clone()[0, 1].unique().tolist() == [2]
    assert masks_to_labelmap(masks, probs)[0, 1].unique().tolist() == [1]  # the most probable wins
    ids = masks_to_labelmap(masks, label_ids=[10, 20, 300])
    assert ids.dtype == torch.int16 and ids[0, 0, 0, 0] == 10 and ids[0, 3, 3, 3] == 300
    assert masks_to_labelmap(torch.ones(300, 1, 1, 1)).dtype == torch.int16


def test_dict_transform_on_masks_and_on_probabilities():
    probs = torch.tensor([0.2, 0.7, 0.4]).view(3, 1, 1, 1).repeat(1, 2, 2, 2)
    probs[2, 0, 0, 0] = 0.95
    probs[:, 1, 1, 1] = 0.1  # nothing reaches the threshold
    x = MetaTensor(probs, meta={"filename_or_obj": "q.nii.gz"})
    d = MasksToLabelMapd("pred", threshold=0.5, ids_key="label_ids", dtype=torch.int16)(
        {"pred": x, "label_ids": torch.tensor([4, 8, 15])}
    )
    out = d["pred"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "q.nii.gz" and out.dtype == torch.int16
    assert out[0, 0, 0, 0] == 15 and out[0, 0, 1, 0] == 8 and out[0, 1, 1, 1] == 0
    no_ids = MasksToLabelMapd("pred", threshold=0.5)({"pred": probs})["pred"]
    assert no_ids[0, 0, 0, 0] == 3 and no_ids[0, 0, 1, 0] == 2 and type(no_ids) is torch.Tensor
    masks = MetaTensor((probs >= 0.5).float(), meta={"filename_or_obj": "q.nii.gz"})
    binary = MasksToLabelMapd("pred")({"pred": masks})["pred"]
    assert binary.dtype == torch.uint8 and binary[0, 0, 0, 0] == 3 and binary.meta["filename_or_obj"] == "q.nii.gz"


def test_largest_component_per_mask_any_channel_count_channel_zero_included() -> None:
    """An in-context task may have any number of classes; channel 0 is a class, not background."""
    for channels in (1, 2, 5):
        masks = torch.zeros(channels, 12, 12, 12)
        masks[:, 1:4, 1:4, 1:4] = 1  # 27 voxels
        masks[:, 8:10, 8:10, 8:10] = 1  # 8 voxels, not connected: removed
        pred = MetaTensor(masks, meta={"filename_or_obj": "q.nii.gz"})
        out = LargestComponentPerMaskd("pred")({"pred": pred})["pred"]
        assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "q.nii.gz"
        assert out.shape == masks.shape and all(int(out[c].sum()) == 27 for c in range(channels))
