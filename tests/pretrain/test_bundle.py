"""mass_pretrain bundle: config properties, metadata, resume after a kill, NaN guard, EMA, multi-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from components.pretrain.checkpoints import latest_checkpoint
from components.pretrain.trainer import NonFiniteLossError
from tests._bundles import bundle_workflow
from tests.pretrain._util import BUNDLE, REPO, masksets_from_labels, tiny_overrides

torch.set_num_threads(1)


def _record_losses(wf: ConfigWorkflow) -> dict[int, float]:
    losses: dict[int, float] = {}
    trainer = wf.parser.get_parsed_content("train#trainer")

    @trainer.on(Events.ITERATION_COMPLETED)
    def _rec(e):
        out = e.state.output
        losses[e.state.iteration] = float(out[0]["loss"] if isinstance(out, list) else out["loss"])

    return losses


@pytest.fixture(scope="module")
def mask_dir(tmp_path_factory):
    return masksets_from_labels(tmp_path_factory.mktemp("masks"), max_ids=12)


def test_check_properties_clean_and_metadata_valid(shared_dir, tmp_path, mask_dir):
    wf = bundle_workflow("mass_pretrain", "train.json", "train", initialize=True, **tiny_overrides(tmp_path, mask_dir))
    assert not wf.check_properties()
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    schema = json.loads((shared_dir / "schema" / "meta_schema_20240725.json").read_text())
    errors = [e.message for e in jsonschema.Draft201909Validator(schema).iter_errors(meta)]
    assert not errors
    assert meta["version"] in meta["changelog"]
    assert set(meta["network_data_format"]["inputs"]) == {"image", "ref_image", "ref_masks"}
    for f in (
        "LICENSE",
        "docs/README.md",
        "configs/logging.conf",
        "configs/inference.json",
        "configs/multi_gpu_train.json",
    ):
        assert (BUNDLE / f).is_file(), f


def test_resume_after_kill_reproduces_next_step_loss(tmp_path, mask_dir):
    full = bundle_workflow(
        "mass_pretrain", "train.json", "train", initialize=True, **tiny_overrides(tmp_path / "full", mask_dir)
    )
    ref = _record_losses(full)
    full.run()
    assert sorted(ref) == [1, 2, 3, 4]

    killed = bundle_workflow(
        "mass_pretrain", "train.json", "train", initialize=True, **tiny_overrides(tmp_path / "killed", mask_dir)
    )
    first = _record_losses(killed)
    trainer = killed.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda e: e.terminate())  # "killed" after epoch 1
    killed.run()
    assert sorted(first) == [1, 2]
    assert first[2] == pytest.approx(ref[2], rel=1e-5)
    ckpt = latest_checkpoint(tmp_path / "killed" / "eval" / "checkpoints")
    state = torch.load(ckpt, weights_only=True)
    assert {"model", "ema_model", "optimizer", "lr_scheduler", "scaler", "trainer"} <= set(state)
    assert state["trainer"]["iteration"] == 2
    # EMA differs from the raw weights after training
    k = next(n for n, v in state["model"].items() if v.is_floating_point() and "task_prior" not in n)
    assert not torch.equal(state["model"][k], state["ema_model"][k])

    resumed = bundle_workflow(
        "mass_pretrain",
        "train.json",
        "train",
        initialize=True,
        **tiny_overrides(tmp_path / "killed", mask_dir, resume=True),
    )
    after = _record_losses(resumed)
    resumed.run()
    assert sorted(after) == [3, 4]
    assert after[3] == pytest.approx(ref[3], rel=1e-4, abs=1e-6)
    assert (tmp_path / "killed" / "models" / "model.pt").is_file()


def test_nan_loss_stops_with_iteration_and_keeps_last_good_checkpoint(tmp_path, mask_dir):
    wf = bundle_workflow("mass_pretrain", "train.json", "train", initialize=True, **tiny_overrides(tmp_path, mask_dir))
    trainer = wf.parser.get_parsed_content("train#trainer")
    real = trainer.loss_function

    def poisoned(logits, target, valid=None):
        loss = real(logits, target, valid=valid)
        return loss * float("nan") if trainer.state.iteration == 3 else loss

    trainer.loss_function = poisoned
    with pytest.raises(Exception) as err:  # MONAI's config runner re-raises it as the cause of a RuntimeError
        wf.run()
    cause = err.value if isinstance(err.value, NonFiniteLossError) else err.value.__cause__
    assert isinstance(cause, NonFiniteLossError)
    assert "iteration 3 (epoch 2)" in str(cause)
    ckpts = sorted((tmp_path / "eval" / "checkpoints").glob("*.pt"))
    assert [p.name for p in ckpts] == ["checkpoint_epoch=1.pt"]
    state = torch.load(ckpts[0], weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    net = wf.parser.get_parsed_content("network")
    assert all(torch.isfinite(p).all() for p in net.parameters())  # the poisoned step was never applied


@pytest.mark.slow
def test_two_process_gloo_run_trains_ranks_on_different_data(tmp_path, mask_dir):
    ov = tiny_overrides(
        tmp_path, mask_dir, iters_per_epoch=2, max_epochs=1, sample_log=str(tmp_path / "ids_{rank}.txt")
    )
    args = []
    for k, v in ov.items():
        args += [f"--{k}", repr(v) if not isinstance(v, str) else v]
    cfg = json.dumps([str(BUNDLE / "configs" / n) for n in ("train.json", "multi_gpu_train.json")])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29631",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        cfg,
        "--logging_file",
        str(BUNDLE / "configs" / "logging.conf"),
        *args,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    res = subprocess.run(cmd, cwd=str(BUNDLE), env=env, capture_output=True, text=True, timeout=600)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    ids = [
        {int(i) for line in (tmp_path / f"ids_{r}.txt").read_text().split("\n") for i in line.split()} for r in (0, 1)
    ]
    assert len(ids[0]) == len(ids[1]) == 2 and not ids[0] & ids[1]  # 2 iterations of batch 1 on each rank
    assert log.count("Saved checkpoint at epoch: 1") == 1  # rank 0 only
    assert log.count("Epoch[1] Metrics -- val_mean_dice") == 1
    assert (tmp_path / "models" / "model.pt").is_file()
    assert [p.name for p in (tmp_path / "eval" / "checkpoints").glob("*.pt")] == ["checkpoint_epoch=1.pt"]


def test_inference_writes_label_map_on_the_query_grid(tmp_path):
    import nibabel as nib
    import numpy as np

    from components.network.nets import build_network

    net = build_network("tiny")
    ckpt = tmp_path / "model.pt"
    torch.save({"model": net.state_dict(), "ema_model": net.state_dict()}, ckpt)
    infer = ["inference.json", "demo.json"]  # demo query/ref
    wf = bundle_workflow(
        "mass_pretrain",
        infer,
        "infer",
        checkpoint=str(ckpt),
        preset="tiny",
        spacing=[4.0, 4.0, 4.0],
        roi_size=[32, 32, 32],
        labels=[4, 17],
        output_dir=str(tmp_path / "out"),
    )
    wf.initialize()
    assert not wf.check_properties()
    wf.run()
    out = nib.load(tmp_path / "out" / "mni152_t1_seg.nii.gz")
    query = nib.load(REPO / "data" / "demo" / "mni152_t1.nii.gz")
    assert out.shape == query.shape and np.allclose(out.affine, query.affine)
    assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 4, 17}


def test_warm_start_loads_our_checkpoint_into_network_and_ema(tmp_path, mask_dir):
    from components.network.nets import build_network

    torch.manual_seed(3)
    raw, ema = build_network("tiny").state_dict(), build_network("tiny").state_dict()
    torch.save({"model": raw, "ema_model": ema}, tmp_path / "ours.pt")
    wf = bundle_workflow(
        "mass_pretrain",
        "train.json",
        "train",
        initialize=True,
        **tiny_overrides(tmp_path, mask_dir, warm_start=str(tmp_path / "ours.pt")),
    )
    trainer = wf.parser.get_parsed_content("train#trainer")
    seen = {}

    @trainer.on(Events.STARTED)  # after the bundle's CheckpointLoader (attached earlier)
    def _grab(e):
        seen["model"] = {k: v.clone() for k, v in wf.parser.get_parsed_content("network").state_dict().items()}
        seen["ema"] = {k: v.clone() for k, v in trainer.ema.ema_model.state_dict().items()}
        e.terminate()

    wf.run()
    assert all(torch.equal(seen["model"][k], raw[k]) for k in raw)
    assert all(torch.equal(seen["ema"][k], ema[k]) for k in ema)
    assert trainer.state.iteration == 0  # weights only: no trainer state from the file


def test_mlflow_tracking_settings_log_params_metrics_and_artifacts(tmp_path, mask_dir):
    import sqlite3

    settings = str(BUNDLE / "configs" / "mlflow.json")  # --tracking configs/mlflow.json
    wf = bundle_workflow(
        "mass_pretrain",
        "train.json",
        "train",
        initialize=True,
        **dict(tiny_overrides(tmp_path, mask_dir, max_epochs=1), run_name="pretrain_test", tracking=settings),
    )
    wf.run()
    wf.finalize()
    con = sqlite3.connect(tmp_path / "eval" / "mlruns.db")
    params = dict(con.execute("select key, value from params").fetchall())
    metrics = {k for (k,) in con.execute("select distinct key from metrics").fetchall()}
    con.close()
    assert params["preset"] == "tiny" and params["num_train_volumes"] == "1" and params["ema_decay"] == "0.99"
    assert {"train_loss", "val_mean_dice"} <= metrics
    artifacts = {p.name for p in (tmp_path / "eval" / "mlruns").rglob("*") if p.is_file()}
    assert "model.pt" in artifacts and any(a.startswith("config_") and a.endswith(".json") for a in artifacts)


def test_label_validation_segments_the_whole_query_volume(tmp_path, mask_dir):
    """val_label_dice: reference cropped around its labels, the query whole (never cropped around its own labels)."""
    from components.data.loading import load_volume
    from components.pretrain.validation import LabelPairDataset

    pair = {
        "ref_image": str(REPO / "data/demo/colin27_t1.nii.gz"),
        "ref_label": str(REPO / "data/demo/colin27_seg.nii.gz"),
        "image": str(REPO / "data/demo/mni152_t1.nii.gz"),
        "label": str(REPO / "data/demo/mni152_seg.nii.gz"),
        "modality": "MR",
    }
    spacing = [6.0, 6.0, 6.0]
    wf = bundle_workflow(
        "mass_pretrain",
        "train.json",
        "train",
        initialize=True,
        **tiny_overrides(tmp_path, mask_dir, val_label_pairs=[pair], spacing=spacing),
    )
    ds = wf.parser.get_parsed_content("validate#label_dataset")
    assert isinstance(ds, LabelPairDataset) and len(ds) == 1
    whole = tuple(load_volume(pair["image"], spacing=spacing).shape[1:])
    item = ds[0]
    assert tuple(item["query_image"].shape[1:]) == whole and tuple(item["query_masks"].shape[1:]) == whole
    assert tuple(item["ref_image"].shape[1:]) == (32, 32, 32)  # the labelled support, cropped to the window
    assert item["valid"].sum() > 8  # more classes than one decoder pass carries: chunked as the release

    evaluator = wf.parser.get_parsed_content("validate#label_evaluator")
    shapes = []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: shapes.append(e.state.output[0]["pred"].shape))
    evaluator.run()
    dice = evaluator.state.metrics["val_label_dice"]
    assert 0.0 <= dice <= 1.0
    assert tuple(shapes[0][1:]) == whole  # one prediction over the whole query grid
