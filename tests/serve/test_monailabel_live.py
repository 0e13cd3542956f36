"""A real MONAI Label 0.8.5 server (apps/monailabel, .venv-serve) on 127.0.0.1, driven over HTTP.

The module's server: /info, /infer of the fixed-class bundle (compared voxel for voxel with
``monai.bundle run``), "label one, segment all" in context after one label is saved (compared with
``monai.bundle run`` of incontext.json, EMA weights), then /train for one epoch on two labelled volumes, and
the refusals (ids and tags that leave the datastore, unreadable uploads, server paths as /infer images: 4xx
with the reason, nothing written). A second server (the authors' release checkpoint, ``allow_server_paths``)
serves in context and segments server paths.
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

from tests.serve._live import DEMO, Server, bundle_run, multipart, save_label, start_app, start_monailabel

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
    assert out.get_data_dtype() == np.uint8, out.get_data_dtype()  # a label map, as metadata.json says (not float32)
    assert set(np.unique(values).tolist()) <= set(range(n_classes + 1))
    return values


def _incontext_bundle_run(
    bundle: Path, reference_label: Path, checkpoint: Path, tmp: Path, **overrides: str
) -> np.ndarray:
    """``monai.bundle run`` of incontext.json on the query with colin27 (``reference_label``) as the one reference."""
    split = tmp / "split.json"
    ref = {"image": str(DEMO / "colin27_t1.nii.gz"), "label": str(reference_label)}
    query = {"image": str(QUERY), "label": str(reference_label)}  # not read: incontext.json uses 'train' only
    split.write_text(json.dumps({"train": [ref], "val": [], "test": [query]}))  # load_split refuses overlaps
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
    outside_models = {p for p in fewshot_export.rglob("*") if "models" not in p.relative_to(fewshot_export).parts}
    r = requests.post(
        server.url + "/train/mass_fewshot",
        params={"run_sync": "true"},
        json={"max_epochs": 1, "device": "cpu", "multi_gpu": False},
        timeout=900,
    )
    assert r.status_code == 200, r.text[:2000] + server.tail()
    assert model.stat().st_mtime_ns > before, server.tail(120)
    reply = r.json()  # what was trained, not {}
    assert reply["epochs"] == 1 and 0.0 <= reply["best_val_mean_dice"] <= 1.0, reply
    import hashlib

    digest = {f"models/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest() for p in (model, scripted)}
    assert {k: reply["files"][k] for k in digest} == digest
    listing = (fewshot_export / "large_files.yml").read_text()  # the zoo's hashes stay true
    assert all(h in listing for h in digest.values()), listing
    assert scripted.stat().st_mode & 0o777 == model.stat().st_mode & 0o777  # at the umask, not 0600
    after = {p for p in fewshot_export.rglob("*") if "models" not in p.relative_to(fewshot_export).parts}
    assert after == outside_models, sorted(map(str, after - outside_models))  # nothing written beside models/
    from components.network.nets import FixedClassNet

    state = torch.load(model, map_location="cpu", weights_only=True)
    net = FixedClassNet("tiny", num_classes=len(class_names))
    net.load_state_dict(state.get("model", state))
    # the TorchScript copy (MONAI Deploy's model) follows the new weights
    window = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(scripted))(window), net.eval()(window), atol=1e-4)


@pytest.fixture(scope="module")
def release_server(serve_python: Path, fewshot_export: Path, shared_dir: Path, tmp_path_factory):
    """A second server: the authors' released checkpoint in context, server paths allowed, no trainer."""
    srv = start_monailabel(
        serve_python,
        tmp_path_factory.mktemp("monailabel_release"),
        fewshot_export,
        shared_dir / "reference" / "official_checkpoint.pth",
        conf={"incontext_init": "release", "skip_trainers": "true", "allow_server_paths": "true"},
    )
    try:
        yield srv
    finally:
        srv.stop()


def test_label_one_segment_all_with_the_release_checkpoint(
    release_server: Server, fewshot_export: Path, shared_dir: Path, bundle_labels, tmp_path: Path
) -> None:
    """The authors' released checkpoint (release container, preset read from the weights) serves in context too."""
    release = shared_dir / "reference" / "official_checkpoint.pth"
    save_label(release_server, "colin27_t1", bundle_labels["colin27_t1"])
    r = requests.post(
        release_server.url + "/infer/mass_incontext", params={"image": "mni152_t1", "output": "image"}, timeout=600
    )
    assert r.status_code == 200, r.text[:2000] + release_server.tail()
    got = _on_input_grid(r.content, tmp_path, 5)
    expected = _incontext_bundle_run(
        fewshot_export, bundle_labels["colin27_t1"], release, tmp_path, init="release", preset="small"
    )
    assert int((got != expected).sum()) == 0


# -- the app stays inside its datastore; bad requests are 4xx with the reason ------------------------------


def _refused(r: requests.Response, status: int, *words: str) -> str:
    """The reply is ``status`` and its ``detail`` holds every one of ``words``; the detail."""
    assert r.status_code == status, f"{r.status_code}: {r.text[:500]}"
    detail = r.json()["detail"]
    assert all(w in detail for w in words), detail
    return detail


def _tree(root: Path) -> set[str]:
    """Every file and folder under ``root`` (relative), the server's own logs aside."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if "logs" not in p.relative_to(root).parts}


def _put_image(server: Server, image: str | None, name: str, body: bytes) -> requests.Response:
    params = {"image": image} if image is not None else {}
    return requests.put(server.url + "/datastore/image", params=params, files={"file": (name, body)}, timeout=60)


def _put_label(server: Server, image: str, tag: str, name: str, body: bytes) -> requests.Response:
    params = {"image": image, "tag": tag}
    return requests.put(server.url + "/datastore/label", params=params, files={"label": (name, body)}, timeout=60)


def test_datastore_refuses_ids_and_tags_that_leave_it(server: Server, bundle_labels, tmp_path: Path) -> None:
    base = server.log.parent.parent  # holds the server's folder (studies, app) and this test's tmp_path
    before = _tree(base)
    volume = (DEMO / "itk_t1.nii.gz").read_bytes()
    for image_id in ("../escape_img", "../../escape_img2", str(tmp_path / "escape_abs"), "a/../../escape_nested", ".."):
        _refused(_put_image(server, image_id, "itk_t1.nii.gz", volume), 400, "image id", repr(image_id))
    # no id given: MONAI Label takes the uploaded file's name
    _refused(_put_image(server, None, "..nii.gz", volume), 400, "image id")
    label = bundle_labels["colin27_t1"].read_bytes()
    for tag in ("../../escape_tag", "../escape_tag2", str(tmp_path / "escape_tag_abs"), "final/../../escape_tag3"):
        _refused(_put_label(server, "colin27_t1", tag, "colin27_t1.nii.gz", label), 400, "tag", repr(tag))
    assert not sorted(base.rglob("*escape*"))
    assert _tree(base) == before  # nothing written anywhere, inside the datastore or outside


def test_datastore_routes_by_id_answer_4xx_with_the_reason(server: Server) -> None:
    """Info updates and removals name an image or label: not plain -> 400, not held -> 404, nothing changed."""
    before = _tree(server.log.parent.parent)
    ds = server.url + "/datastore"
    info = {"info": json.dumps({"note": "x"})}
    _refused(requests.put(ds + "/image/info", params={"image": "nope"}, data=info, timeout=60), 404, "'nope'")
    _refused(requests.put(ds + "/image/info", params={"image": "../x"}, data=info, timeout=60), 400, "image id")
    label_info = {"label": "mni152_t1", "tag": "../../x"}
    _refused(requests.put(ds + "/label/info", params=label_info, data=info, timeout=60), 400, "tag")
    label_info = {"label": "mni152_t1", "tag": "no_such_tag"}
    _refused(requests.put(ds + "/label/info", params=label_info, data=info, timeout=60), 404, "no_such_tag")
    _refused(requests.delete(ds + "/image", params={"id": "../studies"}, timeout=60), 400, "image id")
    _refused(requests.delete(ds + "/image", params={"id": "nope"}, timeout=60), 404, "'nope'")
    _refused(requests.delete(ds + "/label", params={"id": "mni152_t1", "tag": "../../x"}, timeout=60), 400, "tag")
    _refused(requests.delete(ds + "/label", params={"id": "nope", "tag": "final"}, timeout=60), 404, "'nope'")
    assert _tree(server.log.parent.parent) == before


def test_datastore_refuses_unreadable_uploads_with_the_reason(server: Server, tmp_path: Path) -> None:
    studies = server.log.parent / "studies"
    before = _tree(server.log.parent)
    text = b"this is a text file, not a volume\n"
    detail = _refused(_put_image(server, "junk_text", "junk.nii.gz", text), 400, "'junk_text'", "cannot be read as")
    assert "the uploaded file" in detail and "mass-monailabel-" not in detail  # not the server's temporary name
    _refused(_put_image(server, "junk_txt", "notes.txt", text), 400, "'junk_txt'", ".txt", ".nii.gz")
    # a label of another shape than its image, a label that is text, a label of an image not in the datastore
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.uint8), np.eye(4)), str(small))
    detail = _refused(_put_label(server, "mni152_t1", "final", "mni152_t1.nii.gz", small.read_bytes()), 400, "grid")
    assert "(8, 8, 8)" in detail and "(77, 94, 80)" in detail
    _refused(_put_label(server, "mni152_t1", "final", "mni152_t1.nii.gz", text), 400, "cannot be read as a volume")
    volume = nib.load(QUERY)
    half = tmp_path / "half.nii.gz"
    nib.save(nib.Nifti1Image(np.full(volume.shape, 0.5, np.float32), volume.affine), str(half))
    _refused(_put_label(server, "mni152_t1", "final", "m.nii.gz", half.read_bytes()), 400, "whole numbers")
    _refused(_put_label(server, "nope", "final", "nope.nii.gz", small.read_bytes()), 404, "'nope'")
    assert not list(studies.glob("junk*")) and not list((studies / "labels").rglob("mni152_t1*"))
    assert _tree(server.log.parent) == before


def test_infer_takes_only_datastore_ids(server: Server, tmp_path: Path) -> None:
    outside = tmp_path / "outside.nii.gz"
    outside.write_bytes(QUERY.read_bytes())
    infer = server.url + "/infer/mass_fewshot"
    for image in (str(outside), "/etc/passwd", "../studies/mni152_t1", "/"):
        _refused(requests.post(infer, params={"image": image}, timeout=600), 403, repr(image), "allow_server_paths")
    # the image named in the request's params instead of the query
    params = {"params": json.dumps({"image": str(outside)})}
    _refused(requests.post(infer, params={"image": "mni152_t1"}, data=params, timeout=600), 403, "allow_server_paths")
    _refused(requests.post(infer, params={"image": "nope"}, timeout=600), 404, "'nope'", "datastore")
    # an uploaded file is still segmented; an uploaded text file is refused with the reason
    text = {"file": ("junk.nii.gz", b"not a volume")}
    detail = _refused(requests.post(infer, files=text, timeout=600), 400, "cannot be read as a volume")
    assert "the uploaded file" in detail and "mass-monailabel-" not in detail
    with open(outside, "rb") as f:
        r = requests.post(infer, params={"output": "image"}, files={"file": ("upload.nii.gz", f)}, timeout=600)
    assert r.status_code == 200, r.text[:2000] + server.tail()


def test_server_paths_only_when_allowed(release_server: Server, tmp_path: Path) -> None:
    """``--conf allow_server_paths true``: a NIfTI anywhere on the server is segmented; a text file is a 400."""
    outside = tmp_path / "outside.nii.gz"
    outside.write_bytes(QUERY.read_bytes())
    infer = release_server.url + "/infer/mass_fewshot"
    r = requests.post(infer, params={"image": str(outside), "output": "image"}, timeout=600)
    assert r.status_code == 200, r.text[:2000] + release_server.tail()
    _refused(requests.post(infer, params={"image": "/etc/passwd"}, timeout=600), 400, "cannot be read as a volume")
    _refused(requests.post(infer, params={"image": str(tmp_path / "missing.nii.gz")}, timeout=600), 404, "missing")


@pytest.fixture(scope="module")
def stock_server(serve_python: Path, fewshot_export: Path, tmp_path_factory):
    """MONAI Label's own ``monaibundle`` sample app (as installed with MONAI Label) with a copy of our bundle in
    its ``model/`` folder, offline: what a MONAI user who drops the bundle in gets."""
    import shutil

    root = tmp_path_factory.mktemp("monaibundle")
    bundle = root / "mass_fewshot"
    shutil.copytree(fewshot_export, bundle)  # its own copy: /train writes its models/
    stock = serve_python.parents[1] / "monailabel" / "sample-apps" / "monaibundle"
    conf = {"models": "mass_fewshot", "zoo_source": "github", "sam2": "false"}
    srv = start_app(serve_python, root, stock, conf, models=bundle)
    try:
        yield srv
    finally:
        srv.stop()


def test_stock_monaibundle_app_infers_and_trains_the_bundle(
    stock_server: Server, fewshot_export: Path, bundle_labels, class_names, tmp_path: Path
) -> None:
    info = requests.get(stock_server.url + "/info/", timeout=60).json()
    labels = info["models"]["mass_fewshot"]["labels"]
    assert labels == {n.lower(): i for i, n in enumerate(class_names, start=1)}  # names on their label values
    r = requests.post(
        stock_server.url + "/infer/mass_fewshot", params={"image": "mni152_t1", "output": "image"}, timeout=600
    )
    assert r.status_code == 200, r.text[:2000] + stock_server.tail()
    path = tmp_path / "stock.nii.gz"
    path.write_bytes(r.content)
    got = np.asarray(nib.load(path).dataobj)
    expected = bundle_run(fewshot_export, "inference.json", QUERY, tmp_path / "run")
    assert int((got != np.asarray(nib.load(expected).dataobj)).sum()) == 0  # the same segmenter, voxel for voxel
    for case in ("colin27_t1", "itk_t1"):
        save_label(stock_server, case, bundle_labels[case])
    model = stock_server.log.parent / "app" / "model" / "mass_fewshot" / "models" / "model.pt"
    before = model.stat().st_mtime_ns
    r = requests.post(
        stock_server.url + "/train/mass_fewshot",
        params={"run_sync": "true"},
        json={"max_epochs": 1, "device": "cpu", "multi_gpu": False, "val_split": 0.5},
        timeout=900,
    )
    assert r.status_code == 200, r.text[:2000] + stock_server.tail(120)  # no split file needed
    assert model.stat().st_mtime_ns > before, stock_server.tail(120)
