"""In-context few-shot segmentation on the real demo brain MRIs (tiny preset, 3 mm)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from components.checks.errors import VolumeError
from components.data.classes import parse_classes
from components.data.splits import load_split, sample_support
from components.fewshot.finetune import build_incontext_network
from components.inference.evaluate import evaluate
from components.inference.support import EmptyReferenceError, encode_support, load_or_encode_task

SPACING = (3.0, 3.0, 3.0)
ROI = (64, 64, 64)
# eye_fluid (259) is labelled in Colin27 but absent from the skull-stripped MNI152
CLASSES = {"lateral_ventricles": [4, 43], "brain_stem": [16], "eye_fluid": [259]}


def _pair(demo: Path, name: str, seg: str | None = None) -> dict[str, str]:
    return {"image": str(demo / f"{name}_t1.nii.gz"), "label": str(demo / f"{(seg or name)}_seg.nii.gz")}


def test_incontext_end_to_end_on_query_grids(demo_data: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    net = build_incontext_network("tiny", "scratch", seed=0)
    classes = parse_classes(CLASSES)
    support = [_pair(demo_data, "colin27")]
    task_file = tmp_path / "task.pt"
    task = load_or_encode_task(net, task_file, classes, support, SPACING, ROI)
    assert task_file.is_file() and task.num_masks == 3 and task.names == list(CLASSES)
    # reuse: the saved task is loaded (no support needed) and is the same embedding, reducible by class
    again = load_or_encode_task(net, task_file, classes)
    assert all(torch.equal(a, b) for a, b in zip(task.tokens, again.tokens))
    sub = load_or_encode_task(net, task_file, parse_classes({"brain_stem": [16]}))
    assert torch.equal(sub.tokens[0][:, 0], task.tokens[0][:, 1])

    # queries: MNI152 (RAS, 2 mm) and the ITK T1 (LSA, 2x2x3 mm) -> common 3 mm RAS grid and back
    test = [_pair(demo_data, "mni152"), _pair(demo_data, "itk")]
    with torch.no_grad():
        result = evaluate(lambda x: net.segment(x, again), test, classes, SPACING, ROI, save_dir=tmp_path / "pred")
    assert result["failed"] == {} and result["n_cases"] == 2
    for case in result["cases"]:
        for name in ("lateral_ventricles", "brain_stem"):
            s = case["scores"][name]
            assert 0.0 <= s["dice"] <= 1.0 and math.isfinite(s["hd95"]) and s["hd95"] >= 0
    assert math.isfinite(result["dice"]["lateral_ventricles"]) and math.isfinite(result["dice"]["brain_stem"])
    # absent class: excluded for MNI152 (neither 0 nor 1), scored for the ITK subject
    mni = str(demo_data / "mni152_t1.nii.gz")
    assert result["excluded"] == {mni: ["eye_fluid"]}
    assert result["cases"][0]["scores"]["eye_fluid"] is None
    assert result["cases"][1]["scores"]["eye_fluid"] is not None
    # predictions are label maps on each query's own grid
    for item in test:
        stem = Path(item["image"]).name.replace(".nii.gz", "")
        out = nib.load(tmp_path / "pred" / f"{stem}_fewshot.nii.gz")
        ref = nib.load(item["image"])
        assert out.shape == ref.shape
        np.testing.assert_allclose(out.affine, ref.affine, atol=1e-4)
        assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1, 2, 3}


def test_support_sampling_is_seeded(demo_data: Path) -> None:
    train = [_pair(demo_data, "colin27"), _pair(demo_data, "mni152"), _pair(demo_data, "itk")]
    assert sample_support(train, 2, seed=3) == sample_support(train, 2, seed=3)
    draws = {tuple(d["image"] for d in sample_support(train, 1, seed=s)) for s in range(8)}
    assert len(draws) > 1
    with pytest.raises(ValueError, match="only 3 volumes"):
        sample_support(train, 4, seed=0)


def test_empty_reference_mask_names_volume_and_class(demo_data: Path) -> None:
    net = build_incontext_network("tiny", "scratch", seed=0)
    classes = parse_classes({"brain_stem": [16], "not_labelled": [999]})
    with pytest.raises(EmptyReferenceError, match=r"colin27_seg\.nii\.gz: reference mask for class 'not_labelled'"):
        encode_support(net, [_pair(demo_data, "colin27")], classes, SPACING, ROI)


def test_missing_label_file_is_a_clear_error(demo_data: Path, tmp_path: Path) -> None:
    net = build_incontext_network("tiny", "scratch", seed=0)
    missing = tmp_path / "colin27_seg_missing.nii.gz"
    item = {"image": str(demo_data / "colin27_t1.nii.gz"), "label": str(missing)}
    with pytest.raises(VolumeError, match=r"colin27_seg_missing\.nii\.gz: label file does not exist"):
        encode_support(net, [item], parse_classes(CLASSES), SPACING, ROI)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [item], "test": [_pair(demo_data, "mni152")]}))
    with pytest.raises(VolumeError, match="label file does not exist"):
        load_split(split)


def test_patient_level_split_is_fixed_in_a_file(demo_data: Path, tmp_path: Path) -> None:
    from components.data.splits import make_split

    data = [
        dict(_pair(demo_data, "colin27"), patient="A"),
        dict(_pair(demo_data, "itk"), patient="A"),
        dict(_pair(demo_data, "mni152"), patient="B"),
    ]
    path = tmp_path / "split.json"
    split = make_split(data, path, n_test=1, seed=0)
    parts = {p: {d["patient"] for d in split[p]} for p in ("train", "test")}
    assert parts["train"].isdisjoint(parts["test"])  # both scans of patient A stay together
    assert len(split["train"]) + len(split["test"]) == 3
    again = load_split(path)
    assert [d["image"] for d in again["test"]] == [d["image"] for d in split["test"]]
    assert again["val_is_train"] and again["val"] == again["train"]


def test_dice_with_and_without_the_largest_component(demo_data: Path) -> None:
    """An intensity-threshold 'segmenter' gives many components: dropping all but the largest changes the score."""
    classes = parse_classes({"lateral_ventricles": [4, 43], "cerebellum_cortex": [8, 47]})
    test = [_pair(demo_data, "mni152")]

    def bright(x: torch.Tensor) -> torch.Tensor:  # window [B, 1, ...] -> 2 channels: above the mean, in 4-voxel slabs
        slabs = (torch.arange(x.shape[2]) // 4 % 2 == 0).view(1, 1, -1, 1, 1)
        return torch.where(slabs & (x > x.mean()), 5.0, -5.0).repeat(1, len(classes), 1, 1, 1)

    with_lcc = evaluate(bright, test, classes, [4.0] * 3, [48] * 3)
    without = evaluate(bright, test, classes, [4.0] * 3, [48] * 3, largest_component=False)
    assert not with_lcc["failed"] and not without["failed"]
    for name in ("lateral_ventricles", "cerebellum_cortex"):
        assert with_lcc["dice"][name] != without["dice"][name], (with_lcc["dice"], without["dice"])
