"""Few-shot finetuning (FT) through the bundle's train.json on a real brain MRI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from components.data.classes import parse_classes
from components.data.splits import load_split
from components.inference.evaluate import evaluate
from components.network.nets import FixedClassNet
from tests._bundles import bundle_dir, bundle_workflow

BUNDLE = bundle_dir("mass_fewshot")
CLASSES = {"lateral_ventricles": [4, 43], "cerebellum_cortex": [8, 47]}
SPACING, ROI = [3.0, 3.0, 3.0], [64, 64, 64]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_finetuning_raises_training_volume_dice(demo_data: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    colin = {"image": str(demo_data / "colin27_t1.nii.gz"), "label": str(demo_data / "colin27_seg.nii.gz")}
    split = tmp_path / "split.json"
    mni = {"image": str(demo_data / "mni152_t1.nii.gz"), "label": str(demo_data / "mni152_seg.nii.gz")}
    split.write_text(json.dumps({"train": [colin], "val": [colin], "test": [mni]}))  # a test case must be unseen
    out = tmp_path / "ft"
    wf = bundle_workflow(
        "mass_fewshot",
        "train.json",
        "train",
        split_file=str(split),
        classes=CLASSES,
        preset="tiny",
        spacing=SPACING,
        roi_size=ROI,
        patch_size=[48, 48, 48],
        num_samples=1,
        batch_size=1,
        epoch_length=10,
        **{"train#trainer#max_epochs": 2},
        output_dir=str(out),
        ckpt_dir=str(out / "models"),
        val_interval=1,
        ema_decay=0.9,  # 20 iterations: the release's 0.999 would leave the EMA at the initial weights
    )
    wf.initialize()
    init_state = {k: v.detach().clone() for k, v in wf.parser.get_parsed_content("network").state_dict().items()}
    wf.run()
    wf.finalize()

    classes = parse_classes(CLASSES)
    seen = load_split(split)["train"]  # finetuning must raise the Dice of the volume it trained on
    model = FixedClassNet("tiny", num_classes=len(classes)).eval()
    model.load_state_dict(init_state)
    before = evaluate(lambda x: model(x), seen, classes, SPACING, ROI)["dice_mean"]
    model.load_state_dict(torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True))
    after = evaluate(lambda x: model(x), seen, classes, SPACING, ROI)["dice_mean"]
    assert after > before + 0.1 and after > 2 * before, (before, after)


def test_finetuning_evaluates_and_saves_the_ema_weights(demo_data: Path, tmp_path: Path) -> None:
    """As released: an EMA of the weights (decay ``ema_decay``) is validated and written to model.pt."""
    torch.set_num_threads(2)
    colin = {"image": str(demo_data / "colin27_t1.nii.gz"), "label": str(demo_data / "colin27_seg.nii.gz")}
    split = tmp_path / "split.json"
    mni = {"image": str(demo_data / "mni152_t1.nii.gz"), "label": str(demo_data / "mni152_seg.nii.gz")}
    split.write_text(json.dumps({"train": [colin], "val": [colin], "test": [mni]}))  # a test case must be unseen
    out = tmp_path / "ft"
    wf = bundle_workflow(
        "mass_fewshot",
        "train.json",
        "train",
        split_file=str(split),
        classes=CLASSES,
        preset="tiny",
        spacing=[4.0, 4.0, 4.0],
        roi_size=[48, 48, 48],
        patch_size=[32, 32, 32],
        num_samples=1,
        batch_size=1,
        epoch_length=3,
        **{"train#trainer#max_epochs": 1},
        output_dir=str(out),
        ckpt_dir=str(out / "models"),
        val_interval=1,
        ema_decay=0.5,
    )
    wf.initialize()
    assert wf.parser.get_parsed_content("validate#evaluator").network is wf.parser.get_parsed_content("ema").ema_model
    net = wf.parser.get_parsed_content("network")
    init = {k: v.detach().clone() for k, v in net.state_dict().items()}
    wf.run()
    ema = wf.parser.get_parsed_content("ema").ema_model.state_dict()
    saved = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)
    wf.finalize()
    online = net.state_dict()
    moved = [k for k in saved if not torch.equal(online[k], init[k])]
    assert moved, "finetuning changed no weight"
    assert all(torch.equal(saved[k], ema[k].cpu()) for k in saved)  # the file holds the EMA weights
    assert any(not torch.equal(saved[k], online[k].cpu()) for k in moved)  # which differ from the online weights
    # ema = 0.5 * ema + 0.5 * w after each of the 3 steps: strictly between the start and the online weights
    k = moved[0]
    assert 0 < float((saved[k] - init[k]).norm()) < float((online[k] - init[k]).norm()) * 1.5
