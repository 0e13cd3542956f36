"""The mass_probe bundle end to end on the real proxy task (crops of labelled brain MRIs)."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest
import torch

from components.probe.features import build_encoder
from components.probe.proxy import build_proxy_task
from components.probe.sweep import run_bundle
from tests._bundles import bundle_dir, bundle_workflow

BUNDLE = bundle_dir("mass_probe")
CONFIGS = BUNDLE / "configs"
CLASSES = ["ventricles", "thalamus", "cerebellum", "brain_stem"]


def demo_volumes(root: Path) -> list[dict[str, str]]:
    """The labelled demo brains, one scan per split."""
    names = (("colin27", "train"), ("itk", "val"), ("mni152", "test"))
    return [
        {"image": str(root / f"{n}_t1.nii.gz"), "label": str(root / f"{n}_seg.nii.gz"), "split": s} for n, s in names
    ]


@pytest.fixture(scope="module")
def task(tmp_path_factory, demo_data) -> Path:
    """Proxy task: 8 crops/structure from Colin27 (train), 6 from the ITK T1 (val), 3 from MNI152 (test)."""
    out = tmp_path_factory.mktemp("probe_task")
    return build_proxy_task(
        out,
        volumes=demo_volumes(demo_data),
        per_class={"train": 8, "val": 6, "test": 3},
        crop_size=(32, 32, 32),
        spacing=(2.0, 2.0, 2.0),
        seed=0,
    )


pytestmark = pytest.mark.usefixtures("one_thread")


def _overrides(datalist: Path, out: Path, **extra) -> dict:
    return {
        "datalist": str(datalist),
        "classes": CLASSES,  # the default reads classes.json beside the datalist
        "pretrained": "",  # the default expects models/pretrained.pt
        "preset": "tiny",
        "spacing": [2.0, 2.0, 2.0],
        "spatial_size": [32, 32, 32],
        "output_dir": str(out),
        "ckpt_dir": str(out / "models"),
        "cache_dir": str(out.parent / "cache"),
        "learning_rate": 0.01,
        "train#trainer#max_epochs": 12,
        **extra,
    }


def test_proxy_task_files(task):
    rows = list(csv.DictReader(task.open()))
    assert {r["label"] for r in rows} == set(CLASSES)
    assert {r["split"]: r["volume"] for r in rows} == {"train": "colin27_t1", "val": "itk_t1", "test": "mni152_t1"}
    assert len(rows) == 4 * (8 + 6 + 3)
    import nibabel as nib

    img = nib.load(task.parent / rows[0]["image"])
    assert img.shape == (32, 32, 32) and abs(img.header.get_zooms()[0] - 2.0) < 1e-6
    multi = list(csv.DictReader((task.parent / "datalist_multilabel.csv").open()))
    assert all(r[r_label] == "1" for r, r_label in zip(multi, (x["label"] for x in rows)))  # centre structure present


def test_frozen_probe_learns_and_keeps_the_encoder_bitwise(task, tmp_path):
    out = tmp_path / "frozen"
    wf = bundle_workflow("mass_probe", "train.json", "train", **_overrides(task, out))
    wf.initialize()
    assert wf.check_properties() == []
    encoder = wf.parser.get_parsed_content("network").encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    wf.run()
    wf.finalize()
    for k, v in encoder.state_dict().items():
        assert torch.equal(v, before[k]), k
    saved = torch.load(out / "models" / "model.pt", weights_only=True)
    for k, v in before.items():
        assert torch.equal(saved[f"encoder.{k}"], v), k
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_mean_auc"] > 0.6, summary["history"]  # chance is 0.5
    assert set(summary["best_auc_per_class"]) == set(CLASSES)
    head = torch.load(out / "head.pt", weights_only=True)
    assert torch.equal(head["fc.weight"], saved["head.fc.weight"])  # head.pt = the best head of model.pt
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 4 * (8 + 6)  # features computed once, on disk

    # evaluate.json (test split, images through the full network) and inference.json (image -> probabilities)
    ev = bundle_workflow(
        "mass_probe",
        ["train.json", "evaluate.json"],
        "infer",
        **_overrides(task, out, output_dir=str(out / "eval")),
    )
    ev.initialize()
    assert ev.check_properties() == []
    ev.run()
    ev.finalize()
    metrics = dict(csv.reader((out / "eval" / "metrics.csv").open()))
    assert 0.0 <= float(metrics["val_mean_auc"]) <= 1.0 and "val_auc_thalamus" in metrics
    crops = sorted((task.parent / "crops").glob("mni152*"))[:3]
    inf = bundle_workflow(
        "mass_probe",
        "inference.json",
        "infer",
        preset="tiny",
        spacing=[2.0, 2.0, 2.0],
        spatial_size=[32, 32, 32],
        datalist=[str(c) for c in crops],
        output_dir=str(out / "infer"),
        ckpt_path=str(out / "models" / "model.pt"),
    )
    inf.initialize()
    assert inf.check_properties() == []
    inf.run()
    inf.finalize()
    preds = list(csv.reader((out / "infer" / "predictions.csv").open()))
    assert [Path(r[0]).name for r in preds] == [c.name for c in crops]
    for r in preds:
        probs = [float(v) for v in r[1:]]
        assert len(probs) == 4 and abs(sum(probs) - 1.0) < 1e-5


def test_on_the_fly_frozen_training_leaves_the_encoder_unchanged(task, tmp_path):
    pretrained = tmp_path / "pre.pt"
    torch.manual_seed(1)
    torch.save({"model": {f"encoder.{k}": v for k, v in build_encoder("tiny").state_dict().items()}}, pretrained)
    out = tmp_path / "otf"
    s = run_bundle(
        _overrides(
            task, out, pretrained=str(pretrained), cache_features=False, fraction=0.3, **{"train#trainer#max_epochs": 2}
        ),
        BUNDLE,
        quiet=True,
    )
    assert s["params"]["train_rows"] == 4 * round(8 * 0.3)
    saved = torch.load(out / "models" / "model.pt", weights_only=True)
    ref = build_encoder("tiny", pretrained).state_dict()
    for k, v in ref.items():
        assert torch.equal(saved[f"encoder.{k}"], v), k


def test_scratch_baseline_trains_the_encoder_from_random_init(task, tmp_path):
    pretrained = tmp_path / "pre.pt"
    torch.save({"model": {f"encoder.{k}": v for k, v in build_encoder("tiny").state_dict().items()}}, pretrained)
    out = tmp_path / "scratch"
    wf = bundle_workflow(
        "mass_probe",
        "train.json",
        "train",
        **_overrides(
            task,
            out,
            mode="scratch",
            pretrained=str(pretrained),
            learning_rate=1e-3,
            fraction=0.3,
            **{"train#trainer#max_epochs": 1},
        ),
    )
    wf.initialize()
    encoder = wf.parser.get_parsed_content("network").encoder
    assert all(p.requires_grad for p in encoder.parameters())
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    ref = build_encoder("tiny", pretrained).state_dict()
    assert any(not torch.equal(before[k], v) for k, v in ref.items())  # scratch ignores --pretrained
    wf.run()
    wf.finalize()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["params"]["mode"] == "scratch" and summary["params"]["encoder_init"] == "random"
    saved = torch.load(out / "models" / "model.pt", weights_only=True)
    changed = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(saved[f"encoder.{k}"], v)]
    assert len(changed) > len(before) // 2  # the encoder was trained


def test_multilabel_task_and_mlflow_tracking(task, tmp_path):
    out = tmp_path / "ml"
    s = run_bundle(
        _overrides(
            task.parent / "datalist_multilabel.csv",
            out,
            task="multilabel",
            run_name="probe_test",
            **{"train#trainer#max_epochs": 2},
        ),
        BUNDLE,
        quiet=True,
        tracking=str(CONFIGS / "mlflow.json"),  # --tracking configs/mlflow.json
    )
    assert set(s["best_auc_per_class"]) == set(CLASSES) and s["params"]["task"] == "multilabel"
    db = out / "mlruns.db"
    assert db.exists()
    con = sqlite3.connect(db)
    params = dict(con.execute("select key, value from params").fetchall())
    metrics = {k for (k,) in con.execute("select distinct key from metrics").fetchall()}
    con.close()
    assert params["mode"] == "frozen" and params["task"] == "multilabel" and params["fraction"] == "1.0"
    assert {"val_mean_auc", *(f"val_auc_{c}" for c in CLASSES)} <= metrics and "train_loss" in metrics
    artifacts = {p.name for p in out.rglob("*") if "mlruns" in p.parts and p.is_file()}
    assert {"head.pt", "summary.json"} <= artifacts


def test_datalist_faults_stop_the_bundle_with_the_row_named(task, tmp_path):
    bad = tmp_path / "bad.csv"
    lines = task.read_text().splitlines()
    bad.write_text(
        "\n".join(
            [
                lines[0],
                lines[1].replace("crops/", f"{task.parent}/crops/"),
                f"{task.parent}/crops/missing.nii.gz,thalamus,MR,train,x",
            ]
        )
        + "\n"
    )
    with pytest.raises(Exception) as err:
        run_bundle(_overrides(bad, tmp_path / "o"), BUNDLE, quiet=True)
    text = "".join(str(e) for e in _chain(err.value))
    assert f"{bad}, line 3: image file not found" in text


def _chain(e):
    while e is not None:
        yield e
        e = e.__cause__


def test_metadata_is_schema_valid(meta_schema):
    import jsonschema

    schema = meta_schema
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    jsonschema.Draft201909Validator(schema).validate(meta)
    assert meta["version"] in meta["changelog"]
    assert list(meta["network_data_format"]["outputs"]["pred"]["channel_def"].values()) == CLASSES
    assert json.loads((CONFIGS / "inference.json").read_text())["classes"] == CLASSES
