"""mass_fewshot bundle: deployable inference config, bundle properties, metadata."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigWorkflow

from components.network.nets import FixedClassNet

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "mass_fewshot"


def _workflow(name: str | list[str], kind: str, **overrides) -> ConfigWorkflow:
    cfg = BUNDLE / "configs"
    return ConfigWorkflow(
        config_file=[str(cfg / n) for n in ([name] if isinstance(name, str) else name)],
        meta_file=str(cfg / "metadata.json"),
        logging_file=str(cfg / "logging.conf"),
        workflow_type=kind,
        bundle_root=str(BUNDLE),
        **overrides,
    )


def test_inference_writes_label_map_aligned_with_input(demo_data: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    names = json.loads((BUNDLE / "configs/inference.json").read_text())["class_names"]
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save(FixedClassNet("tiny", num_classes=len(names)).state_dict(), ckpt)
    # the ITK T1 is LSA at 2x2x3 mm: the output must come back on exactly that grid
    wf = _workflow(
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
    channel_def = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    inference = json.loads((BUNDLE / "configs/inference.json").read_text())
    assert list(channel_def.values()) == inference["class_names"]
    wf = _workflow(  # the demo override gives the split and the classes (the defaults read /workspace/data)
        ["train.json", "demo.json"],
        "train",
        output_dir=str(tmp_path),
        ckpt_dir=str(tmp_path / "models"),
        spacing=[3.0, 3.0, 3.0],
    )
    wf.initialize()
    assert wf.check_properties() == []
    net = wf.parser.get_parsed_content("network")
    assert isinstance(net, FixedClassNet) and net.num_classes == len(channel_def)
    # class embeddings start from the averaged task embedding of the training reference(s)
    assert (tmp_path / "init_task.pt").is_file()
