"""A real MONAI Label 0.8.5 server (apps/monailabel, .venv-serve) on 127.0.0.1, driven over HTTP.

One server for the module: /info, /infer of the fixed-class bundle (compared voxel for voxel with
``monai.bundle run``), "label one, segment all" in context after one label is saved (compared with
``monai.bundle run`` of incontext.json, EMA weights), then /train for one epoch on two labelled volumes.
Latencies are measured by ``benchmarks/serve_latency.py``, not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from tests.serve._live import DEMO, Server, bundle_run, multipart, save_label, start_monailabel

pytestmark = pytest.mark.timeout(900)
QUERY = DEMO / "mni152_t1.nii.gz"


@pytest.fixture(scope="module")
def server(serve_python: Path, fewshot_export: Path, incontext_checkpoint: Path, tmp_path_factory):
    srv = start_monailabel(serve_python, tmp_path_factory.mktemp("monailabel"), fewshot_export, incontext_checkpoint)
    try:
        yield srv
    finally:
        srv.stop()


def _on_input_grid(data: bytes, tmp: Path, n_classes: int) -> np.ndarray:
    path = tmp / "reply.nii.gz"
    path.write_bytes(data)
    out, ref = nib.load(path), nib.load(QUERY)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-4)
    values = np.asarray(out.dataobj)
    assert set(np.unique(values).tolist()) <= set(range(n_classes + 1))
    return values


def _incontext_bundle_run(
    bundle: Path, reference_label: Path, checkpoint: Path, tmp: Path, **overrides: str
) -> np.ndarray:
    """``monai.bundle run`` of incontext.json on the query with colin27 (``reference_label``) as the one reference."""
    split = tmp / "split.json"
    ref = {"image": str(DEMO / "colin27_t1.nii.gz"), "label": str(reference_label)}
    split.write_text(json.dumps({"train": [ref], "test": [ref]}))
    out = bundle_run(
        bundle,
        "incontext.json",
        QUERY,
        tmp / "run",
        init_checkpoint=str(checkpoint),
        split_file=str(split),
        task_file=str(tmp / "task.pt"),
        **overrides,
    )
    return np.asarray(nib.load(out).dataobj)


def test_info_lists_models_labels_and_trainer(server: Server, class_names: list[str]) -> None:
    info = requests.get(server.url + "/info/", timeout=30).json()
    labels = {n: i for i, n in enumerate(class_names, start=1)}
    assert info["models"]["mass_fewshot"]["labels"] == labels  # background excluded, values 1..N
    assert info["models"]["mass_incontext"]["labels"] == labels
    assert "mass_fewshot" in info["trainers"]


def test_infer_fixed_class_equals_bundle_run(server: Server, fewshot_export: Path, class_names, tmp_path: Path) -> None:
    r = requests.post(server.url + "/infer/mass_fewshot", params={"image": "mni152_t1", "output": "image"}, timeout=600)
    assert r.status_code == 200, r.text[:2000] + server.tail()
    got = _on_input_grid(r.content, tmp_path, len(class_names))
    expected = bundle_run(fewshot_export, "inference.json", QUERY, tmp_path / "run")
    assert len(np.unique(got)) > 2 and int((got != np.asarray(nib.load(expected).dataobj)).sum()) == 0


def test_label_one_segment_all_in_context(
    server: Server, fewshot_export: Path, incontext_checkpoint: Path, bundle_labels, class_names, tmp_path: Path
) -> None:
    r = requests.post(server.url + "/infer/mass_incontext", params={"image": "mni152_t1"}, timeout=600)
    assert r.status_code == 400 and "no labelled reference volume" in r.json()["detail"]
    r = requests.post(
        server.url + "/infer/mass_incontext",
        params={"image": "mni152_t1"},
        data={"params": '{"references": ["itk_t1"]}'},
    )
    assert r.status_code == 400 and "'itk_t1' has no final label" in r.json()["detail"]
    save_label(server, "colin27_t1", bundle_labels["colin27_t1"])
    replies = []
    for _ in range(2):
        r = requests.post(server.url + "/infer/mass_incontext", params={"image": "mni152_t1"}, timeout=600)
        assert r.status_code == 200, r.text[:2000] + server.tail()
        replies.append(multipart(r))
    first, second = (rep["params"] for rep in replies)
    assert first["task_encoded"] is True and second["task_encoded"] is False  # one encoding per label set
    assert [Path(p).name for p in first["references"]] == ["colin27_t1.nii.gz"]
    assert first["classes"] == {n: i for i, n in enumerate(class_names, start=1)}
    got = _on_input_grid(replies[0]["image"][1], tmp_path, len(class_names))
    assert np.array_equal(got, _on_input_grid(replies[1]["image"][1], tmp_path, len(class_names)))
    # monai.bundle run of incontext.json with the same reference and checkpoint (EMA weights) gives the same map
    expected = _incontext_bundle_run(fewshot_export, bundle_labels["colin27_t1"], incontext_checkpoint, tmp_path)
    assert int((got != expected).sum()) == 0
    # a reference labelled with two classes only: just those are segmented, with their own label values
    full = nib.load(bundle_labels["itk_t1"])
    partial = np.where(np.isin(np.asarray(full.dataobj), [2, 5]), np.asarray(full.dataobj), 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(partial, full.affine), str(tmp_path / "itk_t1.nii.gz"))
    save_label(server, "itk_t1", tmp_path / "itk_t1.nii.gz")
    r = requests.post(
        server.url + "/infer/mass_incontext",
        params={"image": "mni152_t1"},
        data={"params": '{"references": ["itk_t1"]}'},
    )
    assert r.status_code == 200, r.text[:2000] + server.tail()
    reply = multipart(r)
    assert reply["params"]["classes"] == {class_names[1]: 2, class_names[4]: 5} and reply["params"]["task_encoded"]
    assert set(np.unique(_on_input_grid(reply["image"][1], tmp_path, len(class_names))).tolist()) <= {0, 2, 5}


def test_train_one_epoch_writes_a_model(server: Server, fewshot_export: Path, bundle_labels, class_names) -> None:
    for case in ("colin27_t1", "itk_t1"):
        save_label(server, case, bundle_labels[case])
    model, scripted = fewshot_export / "models" / "model.pt", fewshot_export / "models" / "model.ts"
    before = model.stat().st_mtime_ns
    r = requests.post(
        server.url + "/train/mass_fewshot",
        params={"run_sync": "true"},
        json={"max_epochs": 1, "device": "cpu", "multi_gpu": False},
        timeout=900,
    )
    assert r.status_code == 200, r.text[:2000] + server.tail()
    assert model.stat().st_mtime_ns > before, server.tail(120)
    from components.network.nets import FixedClassNet

    state = torch.load(model, map_location="cpu", weights_only=True)
    net = FixedClassNet("tiny", num_classes=len(class_names))
    net.load_state_dict(state.get("model", state))
    # the TorchScript copy (MONAI Deploy's model) follows the new weights
    window = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(scripted))(window), net.eval()(window), atol=1e-4)


def test_label_one_segment_all_with_the_release_checkpoint(
    serve_python: Path, fewshot_export: Path, shared_dir: Path, bundle_labels, tmp_path: Path
) -> None:
    """The authors' released checkpoint (release container, preset read from the weights) serves in context too."""
    release = shared_dir / "reference" / "official_checkpoint.pth"
    srv = start_monailabel(
        serve_python,
        tmp_path / "server",
        fewshot_export,
        release,
        conf={"incontext_init": "release", "skip_trainers": "true"},
    )
    try:
        save_label(srv, "colin27_t1", bundle_labels["colin27_t1"])
        r = requests.post(
            srv.url + "/infer/mass_incontext", params={"image": "mni152_t1", "output": "image"}, timeout=600
        )
        assert r.status_code == 200, r.text[:2000] + srv.tail()
    finally:
        srv.stop()
    got = _on_input_grid(r.content, tmp_path, 5)
    expected = _incontext_bundle_run(
        fewshot_export, bundle_labels["colin27_t1"], release, tmp_path, init="release", preset="small"
    )
    assert int((got != expected).sum()) == 0
