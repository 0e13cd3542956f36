"""The mass_probe sweep (``configs/sweep.json``) on the real proxy task: MLflow runs, identity, report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from components.checks.errors import RunFailedError
from components.probe.proxy import build_proxy_task
from components.tracking.store import tracking_client
from tests._bundles import bundle_dir, bundle_workflow

BUNDLE = bundle_dir("mass_probe")
CONFIGS = BUNDLE / "configs"
CLASSES = ["ventricles", "thalamus", "cerebellum", "brain_stem"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task(tmp_path_factory, demo_data) -> Path:
    """6 training crops per structure (Colin27), 4 for validation (ITK T1) and 4 for test (MNI152), 32^3 at 3 mm."""
    out = tmp_path_factory.mktemp("probe_sweep_task")
    names = (("colin27", "train"), ("itk", "val"), ("mni152", "test"))
    volumes = [
        {"image": str(demo_data / f"{n}_t1.nii.gz"), "label": str(demo_data / f"{n}_seg.nii.gz"), "split": s}
        for n, s in names
    ]
    build_proxy_task(
        out, volumes, crop_size=(32,) * 3, spacing=(3.0,) * 3, per_class={"train": 6, "val": 4, "test": 4}, seed=0
    )
    return out


def _sweep(task: Path, out: Path, **overrides) -> dict:
    """``python -m monai.bundle run --config_file configs/sweep.json ...`` in this process; its status."""
    settings = {
        "dataset_dir": str(task),
        "output_dir": str(out),
        "pretrained": "",
        "preset": "tiny",
        "spacing": [3.0, 3.0, 3.0],
        "spatial_size": [32, 32, 32],
        "sweep_runs": ["random_frozen", "scratch_full"],
        "sweep_fractions": [0.5, 1.0],
        "sweep_seeds": [0, 1],
        "frozen_learning_rate": 0.01,
        "frozen_max_epochs": 3,
        "trained_max_epochs": 1,
        **overrides,
    }
    wf = bundle_workflow(
        "mass_probe",
        "sweep.json",
        "train",
        **settings,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    return json.loads((out / "sweep_status.json").read_text())


def test_probe_sweep_logs_runs_report_and_redoes_only_changed_settings(task, tmp_path):
    out = tmp_path / "sweep"
    t0 = time.time()
    status = _sweep(task, out)
    wall = time.time() - t0
    keys = {f"{r}-f{f}-s{s}" for r in ("random_frozen", "scratch_full") for f in ("0.5", "1") for s in (0, 1)}
    assert set(status["runs"]) == keys and all(v.startswith("done") for v in status["runs"].values()), status

    client = tracking_client(status["tracking_uri"])
    exp = client.get_experiment_by_name("mass_probe")
    runs = {r.data.tags["run_key"]: r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("run_key")}
    assert set(runs) == keys
    r = runs["random_frozen-f1-s0"]
    assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == status["parent_run_id"]
    assert (
        r.data.params["mode"] == "frozen"
        and r.data.params["encoder"] == "random"
        and r.data.tags["stage"] == "mass_probe"
    )
    assert {f"test_auc_{c}" for c in CLASSES} <= set(r.data.metrics) and 0 <= r.data.metrics["test_mean_auc"] <= 1
    assert r.data.tags["eval_split"] == "test"
    curve = client.get_metric_history(r.info.run_id, "val_mean_auc")
    assert [m.step for m in curve] == [1, 2, 3]  # one validation AUC per epoch (MONAI MLFlowHandler)
    assert client.get_metric_history(r.info.run_id, "train_loss")
    spans = [(x.info.end_time - x.info.start_time) / 1000 for x in runs.values()]
    assert sum(spans) <= wall and min(spans) > 0.5  # each run spans its work, not the logging
    half = client.search_runs([exp.experiment_id], filter_string="metrics.fraction <= 0.5")
    assert {x.data.tags["run_key"] for x in half} == {k for k in keys if "-f0.5-" in k}  # numeric filtering
    assert {"head.pt", "summary.json", "result.json"} <= {a.path for a in client.list_artifacts(r.info.run_id)}

    parent = client.get_run(status["parent_run_id"])
    assert parent.data.tags["stage"] == "mass_probe_sweep" and parent.data.params["seeds"] == "[0, 1]"
    assert {"report.md", "auc_vs_fraction.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    report = (out / "report.md").read_text()
    assert "| random_frozen | " in report and "| scratch_full | " in report and " ± " in report
    assert "ventricles" in report and "(ddof=1)" in report and (out / "auc_vs_fraction.png").stat().st_size > 10_000
    assert "workflowType=machine_learning" in report

    # the same sweep again: nothing redone; only the frozen heads' epochs changed: those runs redone
    assert all(v == "skipped (finished)" for v in _sweep(task, out)["runs"].values())
    again = _sweep(task, out, frozen_max_epochs=2)["runs"]
    assert {k for k, v in again.items() if v.startswith("done")} == {k for k in keys if k.startswith("random_frozen")}
    assert {k for k, v in again.items() if v.startswith("skipped")} == {k for k in keys if k.startswith("scratch")}
    assert len(list((out / "runs").glob("random_frozen-f1-s0.*"))) == 1  # the earlier run's folder kept aside


def test_a_failing_probe_run_is_recorded_and_the_others_finish(task, tmp_path):
    out = tmp_path / "sweep"
    with pytest.raises(RuntimeError) as failure:  # MONAI wraps the error of the config's "run" expression
        _sweep(
            task,
            out,
            pretrained=str(tmp_path / "missing.pt"),
            preset_from_checkpoint=False,
            sweep_runs=["pretrained_frozen", "random_frozen"],
            sweep_fractions=[1.0],
            sweep_seeds=[0],
        )
    assert isinstance(failure.value.__cause__, RunFailedError) and "1 of 2 probe run" in str(failure.value.__cause__)
    status = json.loads((out / "sweep_status.json").read_text())["runs"]
    assert status["pretrained_frozen-f1-s0"].startswith("failed") and "missing.pt" in status["pretrained_frozen-f1-s0"]
    assert status["random_frozen-f1-s0"].startswith("done")
    assert (out / "runs" / "pretrained_frozen-f1-s0" / "error.txt").is_file()
    assert "## Failed runs" in (out / "report.md").read_text()
