"""Few-shot sweep on real MRIs: MLflow runs, resume after an interruption, report from MLflow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest
import torch

import components.fewshot.sweep as sweep
from components.fewshot.report import write_report

CLASSES = {"lateral_ventricles": [4, 43], "brain_stem": [16]}


class Killed(BaseException):
    """Stands for the process being killed mid-run (not an ``Exception``: the sweep must not catch it)."""


def _config(demo: Path, tmp_path: Path, repo_root: Path) -> dict:
    split = tmp_path / "split.json"
    split.write_text(
        json.dumps(
            {
                "train": [
                    {"image": str(demo / "colin27_t1.nii.gz"), "label": str(demo / "colin27_seg.nii.gz")},
                    {"image": str(demo / "itk_t1.nii.gz"), "label": str(demo / "itk_seg.nii.gz")},
                ],
                "test": [{"image": str(demo / "mni152_t1.nii.gz"), "label": str(demo / "mni152_seg.nii.gz")}],
            }
        )
    )
    return {
        "experiment": "fewshot_test",
        "dataset": "demo_brain_mri",
        "bundle_dir": str(repo_root / "bundles/mass_fewshot"),
        "split_file": str(split),
        "classes": CLASSES,
        "preset": "tiny",
        "spacing": [3.0, 3.0, 3.0],
        "roi_size": [64, 64, 64],
        "modality": "mr",
        "shots": [1],
        "seeds": [0, 1],
        "modes": ["ic"],
        "inits": {"scratch": None, "pretrained": str(tmp_path / "no_such_model.pt")},
    }


def test_sweep_resumes_and_report_reads_mlflow(
    demo_data: Path, tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.set_num_threads(2)
    cfg = _config(demo_data, tmp_path, repo_root)
    out = tmp_path / "sweep"
    uri = f"sqlite:///{out / 'mlruns.db'}"
    calls: list[tuple] = []
    kill_at = [2]  # the 2nd run of the first sweep
    real_run_one = sweep.run_one

    def interrupted(cfg, init, mode, shots, seed, run_dir):  # the second run is killed halfway
        calls.append((init, mode, shots, seed))
        if len(calls) == kill_at[0]:
            kill_at[0] = -1
            raise Killed
        return real_run_one(cfg, init, mode, shots, seed, run_dir)

    monkeypatch.setattr(sweep, "run_one", interrupted)
    with pytest.raises(Killed):
        sweep.run_sweep(cfg, out, tracking_uri=uri)
    assert (out / "runs" / "scratch-ic-k1-s0" / "result.json").is_file()

    calls.clear()
    status = sweep.run_sweep(cfg, out, tracking_uri=uri)["runs"]
    # the finished run is not redone; the interrupted one and the rest are
    assert ("scratch", "ic", 1, 0) not in calls and ("scratch", "ic", 1, 1) in calls
    assert status["scratch-ic-k1-s0"].startswith("skipped")
    assert status["scratch-ic-k1-s1"].startswith("done")
    assert status["pretrained-ic-k1-s0"].startswith("failed") and "no_such_model.pt" in status["pretrained-ic-k1-s0"]

    runs = mlflow.MlflowClient(tracking_uri=uri).search_runs(
        [mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name("fewshot_test").experiment_id]
    )
    parents = [r for r in runs if r.data.tags.get("stage") == "mass_fewshot_sweep"]
    assert [r.info.status for r in parents] == ["FINISHED", "KILLED"]  # newest first: the killed sweep's parent
    runs = [r for r in runs if "run_key" in r.data.tags]
    done = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["run_key"] for r in done) == ["scratch-ic-k1-s0", "scratch-ic-k1-s1"]
    for r in done:
        assert {"mode", "shots", "seed", "init", "dataset", "preset"} <= set(r.data.params)
        assert {"dice_mean", "hd95_mean", "dice_lateral_ventricles", "hd95_brain_stem"} <= set(r.data.metrics)
    for r in done:  # the run spans its work; shots and seed filter numerically; code and bundle version tagged
        seconds = json.loads((out / "runs" / r.data.tags["run_key"] / "result.json").read_text())["seconds"]
        duration = (r.info.end_time - r.info.start_time) / 1000
        assert seconds > 0 and abs(duration - seconds) <= 0.2 * seconds, (duration, seconds)
        assert r.data.metrics["seconds"] == pytest.approx(seconds) and r.data.tags["bundle_version"] != "unknown"
        assert "git_commit" in r.data.tags
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = client.get_experiment_by_name("fewshot_test").experiment_id
    assert len(client.search_runs([exp_id], filter_string="metrics.shots >= 1 and metrics.seed = 1")) == 1
    assert client.search_runs([exp_id], filter_string="metrics.shots >= 5") == []
    failed = [r for r in runs if r.info.status == "FAILED" and r.data.tags.get("run_key") == "pretrained-ic-k1-s0"]
    assert failed and "no_such_model.pt" in failed[0].data.tags["error"]
    # MlflowClient only: nothing process-wide is set, artifacts lie beside the SQLite store
    assert os.environ.get("MLFLOW_TRACKING_URI") != uri
    assert {p.name for p in (out / "mlruns").rglob("result.json")} == {"result.json"}

    calls.clear()
    sweep.run_sweep(cfg, out, tracking_uri=uri)
    assert calls == [("pretrained", "ic", 1, 0), ("pretrained", "ic", 1, 1)]  # only the failed ones again

    md = write_report(uri, "fewshot_test", out)
    text = md.read_text()
    assert (out / "dice_vs_shots.png").stat().st_size > 1000
    assert "| init / mode | 1-shot |" in text
    row = next(line for line in text.splitlines() if line.startswith("| scratch / IC |"))
    assert "±" in row and "(n=" not in row  # both seeds present
    assert "pretrained-ic-k1-s0" in text and "no_such_model.pt" in text  # failures listed
    assert "mlflow ui --backend-store-uri sqlite:///" in text
    assert f"#/experiments/{exp_id}?workflowType=machine_learning" in text  # the runs table, not GenAI traces


def test_sweep_redoes_runs_whose_initialisation_file_changed(
    demo_data: Path, tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components.network.nets import build_network

    torch.set_num_threads(2)
    ckpt = tmp_path / "model.pt"
    cfg = dict(_config(demo_data, tmp_path, repo_root), seeds=[0], inits={"scratch": None, "pretrained": str(ckpt)})
    out, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'sweep' / 'mlruns.db'}"
    calls: list[str] = []
    real_run_one = sweep.run_one

    def counted(cfg, init, mode, shots, seed, run_dir):
        calls.append(init)
        return real_run_one(cfg, init, mode, shots, seed, run_dir)

    monkeypatch.setattr(sweep, "run_one", counted)
    torch.manual_seed(1)
    torch.save({"model": build_network("tiny").state_dict()}, ckpt)
    sweep.run_sweep(cfg, out, tracking_uri=uri)
    assert sorted(calls) == ["pretrained", "scratch"]
    first = json.loads((out / "runs" / "pretrained-ic-k1-s0" / "result.json").read_text())["init_sha256"]

    calls.clear()
    torch.manual_seed(2)  # "retrained": same file name, new weights
    torch.save({"model": build_network("tiny").state_dict()}, ckpt)
    status = sweep.run_sweep(cfg, out, tracking_uri=uri)["runs"]
    assert calls == ["pretrained"] and status["scratch-ic-k1-s0"].startswith("skipped")
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("fewshot_test").experiment_id],
        filter_string="tags.run_key = 'pretrained-ic-k1-s0'",
        order_by=["attributes.start_time DESC"],
    )
    assert len(runs) == 2 and runs[0].data.tags["init_sha256"] != first == runs[1].data.tags["init_sha256"]


def test_two_datasets_in_one_store_are_run_and_reported_apart(
    demo_data: Path, tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same run keys, another dataset (name, split, classes): run, not skipped; the report never mixes them."""
    torch.set_num_threads(2)
    a = dict(_config(demo_data, tmp_path, repo_root), seeds=[0], inits={"scratch": None})
    split_b = tmp_path / "split_b.json"  # dataset B: ITK brain as support, other classes
    split_b.write_text(
        json.dumps(
            {
                "train": [{"image": str(demo_data / "itk_t1.nii.gz"), "label": str(demo_data / "itk_seg.nii.gz")}],
                "test": [{"image": str(demo_data / "mni152_t1.nii.gz"), "label": str(demo_data / "mni152_seg.nii.gz")}],
            }
        )
    )
    b = dict(a, dataset="dataset_B", split_file=str(split_b), classes={"cerebellum_cortex": [8, 47]})
    out, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'sweep' / 'mlruns.db'}"
    calls: list[str] = []
    real_run_one = sweep.run_one

    def counted(cfg, init, mode, shots, seed, run_dir):
        calls.append(cfg["dataset"])
        return real_run_one(cfg, init, mode, shots, seed, run_dir)

    monkeypatch.setattr(sweep, "run_one", counted)
    status_a = sweep.run_sweep(a, out, tracking_uri=uri)
    status_b = sweep.run_sweep(b, out, tracking_uri=uri)
    assert calls == ["demo_brain_mri", "dataset_B"], calls
    assert status_b["runs"]["scratch-ic-k1-s0"].startswith("done")
    assert status_a["data_settings_sha256"] != status_b["data_settings_sha256"]
    # A's run folder is kept beside B's, under A's settings hash
    kept = [p for p in (out / "runs").iterdir() if p.name.startswith("scratch-ic-k1-s0.")]
    assert len(kept) == 1 and json.loads((kept[0] / "result.json").read_text())["dice"].keys() == {
        "lateral_ventricles",
        "brain_stem",
    }

    text_b = write_report(uri, "fewshot_test", tmp_path / "rep_b", status_b["data_settings_sha256"]).read_text()
    assert "Dataset `dataset_B`" in text_b and "demo_brain_mri" not in text_b and "lateral_ventricles" not in text_b
    both = write_report(uri, "fewshot_test", tmp_path / "rep_all").read_text()
    assert both.count("# Data setting ") == 2 and "Dataset `dataset_B`" in both and "Dataset `demo_brain_mri`" in both
    assert len(list((tmp_path / "rep_all").glob("dice_vs_shots_*.png"))) == 2

    calls.clear()  # each sweep again: both skipped
    assert sweep.run_sweep(a, out, tracking_uri=uri)["runs"]["scratch-ic-k1-s0"].startswith("skipped")
    assert sweep.run_sweep(b, out, tracking_uri=uri)["runs"]["scratch-ic-k1-s0"].startswith("skipped")
    assert calls == []


def test_a_changed_finetuning_setting_redoes_only_the_ft_runs(
    demo_data: Path, tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = dict(_config(demo_data, tmp_path, repo_root), seeds=[0], modes=["ic", "ft"], inits={"scratch": None})
    cfg["ft_overrides"] = {"epoch_length": 2}
    out, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'sweep' / 'mlruns.db'}"
    calls: list[str] = []

    def fake(cfg, init, mode, shots, seed, run_dir):  # the identity logic only: no training needed
        calls.append(mode)
        return {"dice": {}, "hd95": {}, "dice_mean": 0.5, "hd95_mean": 1.0, "n_cases": 1, "failed": {},
                "excluded": {}, "cases": [], "seconds": 0.0}  # fmt: skip

    monkeypatch.setattr(sweep, "run_one", fake)
    sweep.run_sweep(cfg, out, tracking_uri=uri)
    assert sorted(calls) == ["ft", "ic"]
    calls.clear()
    status = sweep.run_sweep(dict(cfg, ft_overrides={"epoch_length": 3}), out, tracking_uri=uri)["runs"]
    assert calls == ["ft"] and status["scratch-ic-k1-s0"].startswith("skipped")
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("fewshot_test").experiment_id],
        filter_string="tags.run_key = 'scratch-ft-k1-s0'",
        order_by=["attributes.start_time DESC"],
    )
    assert [json.loads(r.data.params["ft_overrides"]) for r in runs] == [{"epoch_length": 3}, {"epoch_length": 2}]


def test_sweep_level_run_holds_the_report_and_each_run_its_outputs(
    demo_data: Path, tmp_path: Path, repo_root: Path
) -> None:
    """Through the MLflow API: the parent run's report artifact, a child run's task embedding and predictions."""
    torch.set_num_threads(2)
    cfg = dict(_config(demo_data, tmp_path, repo_root), seeds=[0], inits={"scratch": None})
    out, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'sweep' / 'mlruns.db'}"
    status = sweep.sweep_and_report(cfg, out, tracking_uri=uri, preset_from_checkpoint=False)
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.get_run(status["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["dataset"] == "demo_brain_mri"
    report = Path(client.download_artifacts(parent.info.run_id, "report.md", str(tmp_path / "dl"))).read_text()
    assert "| scratch / IC |" in report and "(n=1)" in report and "± 0.0" not in report
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"report.md", "dice_vs_shots.png"}
    exp_id = parent.info.experiment_id
    (child,) = client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    names = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"result.json", "task.pt", "pred"} <= names, names
    assert [a.path for a in client.list_artifacts(child.info.run_id, "pred")] == ["pred/mni152_t1_fewshot.nii.gz"]

    small = dict(cfg, artifact_max_mb=0.001, dataset="same_data_other_name")  # the size limit leaves files out
    status = sweep.sweep_and_report(small, tmp_path / "sweep2", tracking_uri=uri, preset_from_checkpoint=False)
    (child,) = client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{status['parent_run_id']}'")
    assert {a.path for a in client.list_artifacts(child.info.run_id)} == {"result.json"}
    assert "task.pt" in child.data.tags["artifacts_skipped"]


def test_finetuning_inside_the_sweep_is_a_child_run_with_its_curve(
    demo_data: Path, tmp_path: Path, repo_root: Path
) -> None:
    torch.set_num_threads(2)
    cfg = dict(_config(demo_data, tmp_path, repo_root), seeds=[0], modes=["ft"], inits={"scratch": None})
    cfg.update(spacing=[4.0] * 3, roi_size=[48] * 3)
    cfg["ft_overrides"] = {"epoch_length": 2, "train#trainer#max_epochs": 2, "patch_size": [32] * 3, "batch_size": 1}
    out, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'sweep' / 'mlruns.db'}"
    status = sweep.run_sweep(cfg, out, tracking_uri=uri)
    assert status["runs"]["scratch-ft-k1-s0"].startswith("done"), status
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp_id = client.get_experiment_by_name("fewshot_test").experiment_id
    (ft,) = client.search_runs([exp_id], filter_string="tags.stage = 'mass_fewshot_ft'")
    assert ft.data.tags["mlflow.parentRunId"] == status["parent_run_id"] and ft.data.tags["ft_of"] == "scratch-ft-k1-s0"
    assert ft.info.status == "FINISHED"
    assert (
        ft.data.params["learning_rate"] == "0.0005" and json.loads(ft.data.params["ft_overrides"])["epoch_length"] == 2
    )
    loss = client.get_metric_history(ft.info.run_id, "Loss")
    assert len(loss) == 4  # 2 epochs x 2 iterations
    val = client.get_metric_history(ft.info.run_id, "val_mean_dice")
    assert sorted(m.step for m in val) == [1, 2] and all(0.0 <= m.value <= 1.0 for m in val)
    assert client.get_metric_history(ft.info.run_id, "lr_group_0")  # the learning rate, as MONAI names it
