"""Split files: the validation part, or the training items when there is no split file."""

from __future__ import annotations

import json


def test_validation_items_from_the_split_or_the_training_items(tmp_path):
    from components.data.splits import validation_items

    train = [{"image": "a.nii.gz", "label": "a_seg.nii.gz"}]
    assert validation_items(str(tmp_path / "no_split.json"), train) == train  # MONAI Label's stock app
    split = {
        "train": train,
        "val": [{"image": "b.nii.gz", "label": "b_seg.nii.gz"}],
        "test": [{"image": "c.nii.gz", "label": "c_seg.nii.gz"}],
    }
    (tmp_path / "split.json").write_text(json.dumps(split))
    for part in split.values():
        for d in part:
            for k in ("image", "label"):
                (tmp_path / d[k]).touch()
    got = validation_items(str(tmp_path / "split.json"), train)
    assert [p.split("/")[-1] for p in (d["image"] for d in got)] == ["b.nii.gz"]
