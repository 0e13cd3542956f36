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
    done = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["run_key"] for r in done) == ["scratch-ic-k1-s0", "scratch-ic-k1-s1"]
    for r in done:
        assert {"mode", "shots", "seed", "init", "dataset", "preset"} <= set(r.data.params)
        assert {"dice_mean", "hd95_mean", "dice_lateral_ventricles", "hd95_brain_stem"} <= set(r.data.metrics)
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
