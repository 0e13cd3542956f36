"""mass_fewshot bundle: deployable inference config, bundle properties, metadata."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

from components.data.preprocessing import preprocessing
from components.network.nets import FixedClassNet
from tests._bundles import bundle_dir, bundle_workflow

BUNDLE = bundle_dir("mass_fewshot")


def test_inference_writes_label_map_aligned_with_input(demo_data: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    names = json.loads((BUNDLE / "configs/inference.json").read_text())["class_names"]
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save(FixedClassNet("tiny", num_classes=len(names)).state_dict(), ckpt)
    # the ITK T1 is LSA at 2x2x3 mm: the output must come back on exactly that grid
    wf = bundle_workflow(
        "mass_fewshot",
        "inference.json",
        "infer",
        ckpt_path=str(ckpt),
        output_dir=str(tmp_path / "out"),
        dataset_dir=str(demo_data),
        image_pattern="itk_t1.nii.gz",
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    out = nib.load(tmp_path / "out" / "itk_t1_seg.nii.gz")
    ref = nib.load(demo_data / "itk_t1.nii.gz")
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-4)
    values = set(np.unique(np.asarray(out.dataobj)).tolist())
    assert values <= set(range(len(names) + 1)) and len(values) > 1


def test_train_workflow_properties_and_metadata(meta_schema: dict, tmp_path: Path) -> None:
    meta = json.loads((BUNDLE / "configs/metadata.json").read_text())
    schema = meta_schema
    assert not list(jsonschema.Draft201909Validator(schema).iter_errors(meta))
    channel_def = meta["network_data_format"]["post_processed_outputs"]["pred"]["channel_def"]
    inference = json.loads((BUNDLE / "configs/inference.json").read_text())
    # label values, MONAI Label's /info labels and train.json's classes share one numbering: 0 background, 1..N
    names = inference["class_names"]
    assert channel_def == {"0": "background", **{str(i + 1): n for i, n in enumerate(names)}}
    # the network's N logit channels (no background), keyed by the label value each becomes: MONAI Label's
    # stock bundle apps take these keys as the label values of /info
    logits = meta["network_data_format"]["outputs"]["pred"]
    assert logits["channel_def"] == {str(i + 1): n for i, n in enumerate(names)}
    assert logits["num_channels"] == len(names) == len(logits["channel_def"])
    for name in ("train.json", "evaluate.json", "incontext.json"):
        parser = ConfigParser()
        parser.read_config(str(BUNDLE / "configs" / name))
        assert parser.get_parsed_content("class_names") == names, name
        assert parser.get_parsed_content("classes") == {n: [i + 1] for i, n in enumerate(names)}, name
    wf = bundle_workflow(
        "mass_fewshot",  # the demo override gives the split and the classes (the defaults read /workspace/data)
        ["train.json", "demo.json"],
        "train",
        output_dir=str(tmp_path),
        ckpt_dir=str(tmp_path / "models"),
        spacing=[3.0, 3.0, 3.0],
    )
    wf.initialize()
    assert wf.check_properties() == []
    net = wf.parser.get_parsed_content("network")
    assert isinstance(net, FixedClassNet) and net.num_classes == len(channel_def) - 1
    # class embeddings start from the averaged task embedding of the training reference(s)
    assert (tmp_path / "init_task.pt").is_file()
    # the transforms listed in train.json give exactly the one preprocessing of every in-context path
    item = wf.parser.get_parsed_content("support")[0]
    classes = wf.parser.get_parsed_content("class_list")
    listed = Compose(wf.parser.get_parsed_content("train#deterministic_transforms"))(dict(item))
    shared = Compose(preprocessing(["image", "label"], [3.0, 3.0, 3.0], "mr", classes=classes))(dict(item))
    for key in ("image", "label"):
        assert torch.equal(listed[key].as_tensor(), shared[key].as_tensor()), key
        assert np.allclose(listed[key].affine, shared[key].affine), key
    assert listed["label"].shape[0] == len(classes)
    patches = wf.parser.get_parsed_content("train#preprocessing")(dict(item))
    assert len(patches) == 2 and all(tuple(x["image"].shape[1:]) == (48, 48, 48) for x in patches)


def test_deployed_inference_equals_sweep_prediction(demo_data: Path, tmp_path: Path) -> None:
    """`monai.bundle run` of inference.json gives voxel for voxel the label map the few-shot sweep scored.

    MNI152 at 3 mm is 51 x 63 x 53 voxels, smaller than the 64^3 window in every dim: padding (the volume's
    minimum, not 0) and blending (sigmoid per window) must be the sweep's for the maps to agree.
    """
    from components.data.classes import parse_classes
    from components.fewshot.sweep import _fixed_class_predictor
    from components.inference.evaluate import evaluate
    from tests.serve._live import bundle_run

    inference = json.loads((BUNDLE / "configs/inference.json").read_text())
    names = inference["class_names"]
    torch.manual_seed(3)
    net = FixedClassNet("tiny", num_classes=len(names))
    ckpt = tmp_path / "model.pt"
    torch.save({"model": net.state_dict()}, ckpt)
    classes = parse_classes({n: [i + 1] for i, n in enumerate(names)})
    test = [{"image": str(demo_data / "mni152_t1.nii.gz"), "label": str(demo_data / "mni152_seg.nii.gz")}]
    predictor = _fixed_class_predictor(inference["preset"], len(names), ckpt, "cpu")
    evaluate(predictor, test, classes, inference["spacing"], inference["roi_size"], save_dir=tmp_path / "sweep")
    bundle_run(BUNDLE, "inference.json", demo_data / "mni152_t1.nii.gz", tmp_path / "bundle", ckpt_path=str(ckpt))
    swept = nib.load(tmp_path / "sweep" / "mni152_t1_fewshot.nii.gz")
    deployed = nib.load(tmp_path / "bundle" / "mni152_t1_seg.nii.gz")
    a, b = np.asarray(swept.dataobj), np.asarray(deployed.dataobj)
    assert a.shape == b.shape == nib.load(test[0]["image"]).shape
    np.testing.assert_allclose(swept.affine, deployed.affine, atol=1e-5)
    assert len(np.unique(a)) > 2, "the check needs a prediction with several classes"
    assert int((a != b).sum()) == 0
