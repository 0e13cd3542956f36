"""HD95 in mm for the few-shot evaluate workflow (MONAI's handler can only give voxels)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.metrics import HausdorffDistanceMetric

from components.inference.evaluate import HausdorffDistanceMM
from components.network.nets import FixedClassNet
from tests._bundles import bundle_dir, bundle_workflow

BUNDLE = bundle_dir("mass_fewshot")


def _case(spacing: tuple[float, float, float], shift: int) -> tuple[MetaTensor, MetaTensor]:
    gt = torch.zeros(1, 24, 24, 24)
    gt[0, 6:14, 6:14, 6:14] = 1
    pred = torch.roll(gt, shift, dims=1)
    affine = torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))
    return MetaTensor(pred, affine=affine), MetaTensor(gt, affine=affine)


def test_hd95_handler_uses_each_cases_spacing() -> None:
    cases = [_case((2.5, 2.5, 2.5), 3), _case((1.0, 1.0, 4.0), 2)]
    batches = [{"pred": [p], "label": [g]} for p, g in cases]
    engine = Engine(lambda e, batch: batch)
    HausdorffDistanceMM(percentile=95, reduction="mean_batch").attach(engine, "hd95_mm")
    engine.run(batches, max_epochs=1)
    per_case = [
        float(
            HausdorffDistanceMetric(include_background=True, percentile=95)(
                p[None], g[None], spacing=list(np.diag(p.affine)[:3])
            )
        )
        for p, g in cases
    ]
    voxels = [
        float(HausdorffDistanceMetric(include_background=True, percentile=95)(p[None], g[None])) for p, g in cases
    ]
    assert per_case[0] == pytest.approx(2.5 * voxels[0])  # isotropic: mm = spacing x voxels
    assert per_case[1] == pytest.approx(voxels[1])  # the shift is along a 1 mm axis
    assert float(engine.state.metrics["hd95_mm"]) == pytest.approx(np.mean(per_case))


def test_hd95_handler_refuses_plain_tensors() -> None:
    handler = HausdorffDistanceMM()
    with pytest.raises(TypeError, match="MetaTensor"):
        handler.update(([torch.zeros(1, 4, 4, 4)], [torch.zeros(1, 4, 4, 4)]))


def test_evaluate_workflow_reports_hd95_in_mm(demo_data: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    cfg = json.loads((BUNDLE / "configs/demo.json").read_text())  # split and classes of the demo
    torch.manual_seed(0)
    ckpt = tmp_path / "model.pt"
    torch.save(FixedClassNet("tiny", num_classes=len(cfg["classes"])).state_dict(), ckpt)
    wf = bundle_workflow(
        "mass_fewshot",
        ["evaluate.json", "demo.json"],
        "infer",
        ckpt_path=str(ckpt),
        output_dir=str(tmp_path / "eval"),
        dataset_dir=str(demo_data),
        spacing=[3.0, 3.0, 3.0],
        roi_size=[64, 64, 64],
        **{
            "network_def#preset": "tiny",
            # MONAI's own handler beside ours, for the voxel-unit comparison
            "additional_metrics#hd95_voxels": {
                "_target_": "HausdorffDistance",
                "include_background": True,
                "percentile": 95,
                "reduction": "mean_batch",
                "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
            },
        },
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    rows = list(csv.reader((tmp_path / "eval" / "test_hd95_mm_raw.csv").open()))
    values = [float(v) for v in rows[1][1:] if v not in ("nan", "inf")]
    assert values, rows
    assert all(v < 400 for v in values)  # a head is ~200 mm across
    metrics = wf.parser.get_parsed_content("evaluator").state.metrics
    mm, vox = np.asarray(metrics["test_hd95_mm"]), np.asarray(metrics["hd95_voxels"])
    np.testing.assert_allclose(mm, 3.0 * vox, rtol=1e-4)  # the resampled grid is 3 mm isotropic
