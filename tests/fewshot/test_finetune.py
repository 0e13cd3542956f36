"""Few-shot finetuning (FT) through the bundle's train.json on a real brain MRI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow

from components.fewshot.evaluate import evaluate
from components.fewshot.tasks import load_split, parse_classes
from components.network.nets import FixedClassNet

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "mass_fewshot"
CLASSES = {"lateral_ventricles": [4, 43], "cerebellum_cortex": [8, 47]}
SPACING, ROI = [3.0, 3.0, 3.0], [64, 64, 64]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_finetuning_raises_training_volume_dice(demo_data: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    colin = {"image": str(demo_data / "colin27_t1.nii.gz"), "label": str(demo_data / "colin27_seg.nii.gz")}
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [colin], "val": [colin], "test": [colin]}))
    out = tmp_path / "ft"
    wf = ConfigWorkflow(
        config_file=str(BUNDLE / "configs/train.json"),
        workflow_type="train",
        bundle_root=str(BUNDLE),
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
    )
    wf.initialize()
    init_state = {k: v.detach().clone() for k, v in wf.parser.get_parsed_content("network").state_dict().items()}
    wf.run()
    wf.finalize()

    classes = parse_classes(CLASSES)
    test = load_split(split)["test"]
    model = FixedClassNet("tiny", num_classes=len(classes)).eval()
    model.load_state_dict(init_state)
    before = evaluate(lambda x: model(x), test, classes, SPACING, ROI)["dice_mean"]
    model.load_state_dict(torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True))
    after = evaluate(lambda x: model(x), test, classes, SPACING, ROI)["dice_mean"]
    assert after > before + 0.1 and after > 2 * before, (before, after)
