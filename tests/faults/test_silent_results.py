"""The silent wrong results of issue 14 are now errors or warnings that name the file."""

from __future__ import annotations

import logging
import os
import stat
import types

import nibabel as nib
import numpy as np
import pytest
import torch

from components.checks.cli import guarded
from components.checks.errors import RunFailedError
from components.data.classes import FewShotClass
from components.data.loading import load_volume
from components.inference.evaluate import evaluate
from components.io.atomic import atomic_json
from components.io.maskset import write_maskset
from components.maskgen.workflow import output_is_complete
from components.probe.metrics import ProbeRecorder
from tests.faults._harness import DEMO


class _Catch(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_finished_outputs_get_the_umask_permissions_not_0600(tmp_path, umask_022):
    atomic_json(tmp_path / "summary.json", {"a": 1})
    m = np.zeros((4, 4, 4), bool)
    m[1, 1, 1] = True
    write_maskset(tmp_path / "a.mset", [m], np.eye(4))
    for name in ("summary.json", "a.mset"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


@pytest.mark.parametrize("zooms", [(100.0, 2.0, 2.0), (2.0, 2.0, 0.0), (0.01, 0.01, 1.0)])
def test_implausible_spacing_is_a_logged_line_naming_the_file(tmp_path, zooms):
    data = np.random.default_rng(0).random((8, 8, 8), dtype=np.float32)
    if 0.0 in zooms:  # a zero spacing in the header, no qform/sform
        img = nib.Nifti1Image(data, None)
        img.header.set_zooms(zooms)
    else:
        img = nib.Nifti1Image(data, np.diag([*zooms, 1.0]))
    path = tmp_path / "odd.nii.gz"
    nib.save(img, path)
    catch = _Catch()
    logging.getLogger("mass.data").addHandler(catch)
    try:
        load_volume(path)
    finally:
        logging.getLogger("mass.data").removeHandler(catch)
    assert len(catch.lines) == 1 and catch.lines[0].startswith(f"{path}: ")
    assert ("implausible voxel spacing" if 0.0 not in zooms else "neither qform nor sform") in catch.lines[0]


def test_plausible_spacing_is_silent():
    catch = _Catch()
    logging.getLogger("mass.data").addHandler(catch)
    try:
        load_volume(DEMO / "colin27_t1.nii.gz")
    finally:
        logging.getLogger("mass.data").removeHandler(catch)
    assert catch.lines == []


def _label_variant(tmp_path, name, shift_mm=0.0, as_float=False):
    src = nib.load(DEMO / "colin27_seg.nii.gz")
    data = np.asarray(src.dataobj)
    affine = src.affine.copy()
    affine[0, 3] += shift_mm
    if as_float:
        data = data.astype(np.float32) * 0.5  # a probability-like map: half-integer values
    out = tmp_path / name
    nib.save(nib.Nifti1Image(data, affine), out)
    return out


@pytest.mark.parametrize(
    "name,kwargs,expected",
    [("shifted.nii.gz", {"shift_mm": 30.0}, "affine"), ("float.nii.gz", {"as_float": True}, "non-integer values")],
)
def test_fewshot_label_off_grid_or_float_fails_the_case_naming_the_label(tmp_path, name, kwargs, expected, one_thread):
    label = _label_variant(tmp_path, name, **kwargs)
    test = [{"image": str(DEMO / "colin27_t1.nii.gz"), "label": str(label)}]
    predictor = lambda x: torch.zeros(x.shape[0], 1, *x.shape[2:])  # noqa: E731
    result = evaluate(predictor, test, [FewShotClass("wm", (2,))], spacing=(6.0, 6.0, 6.0), roi_size=(32, 32, 32))
    (reason,) = result["failed"].values()
    assert reason.startswith(f"{label}: ") and expected in reason
    assert result["n_cases"] == 0


def test_a_label_stored_as_float_with_whole_values_is_accepted(tmp_path, one_thread):
    src = nib.load(DEMO / "colin27_seg.nii.gz")
    label = tmp_path / "float_ids.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj).astype(np.float32), src.affine), label)
    test = [{"image": str(DEMO / "colin27_t1.nii.gz"), "label": str(label)}]
    predictor = lambda x: torch.zeros(x.shape[0], 1, *x.shape[2:])  # noqa: E731
    result = evaluate(predictor, test, [FewShotClass("wm", (2,))], spacing=(6.0, 6.0, 6.0), roi_size=(32, 32, 32))
    assert result["failed"] == {} and result["n_cases"] == 1


def test_maskgen_resume_redoes_a_mask_set_with_an_edited_header(tmp_path):
    image = DEMO / "colin27_t1.nii.gz"
    m = np.zeros((8, 8, 8), bool)
    m[2:6, 2:6, 2:6] = True
    out = tmp_path / "colin27_t1.mset"
    sig = {"image": str(image), "image_bytes": image.stat().st_size}
    write_maskset(out, [m], np.eye(4), image_path=str(image), extra={"source_sig": sig})
    assert output_is_complete(out, str(image))
    raw = bytearray(out.read_bytes())
    i = raw.index(b'"index":[[') + len(b'"index":[[')
    j = raw.index(b",", raw.index(b",", i) + 1) + 1  # first bounding-box digit
    raw[j] = ord("3") if raw[j] != ord("3") else ord("4")
    out.write_bytes(bytes(raw))
    assert not output_is_complete(out, str(image), deep=False)


def test_probe_summary_counts_only_rows_that_were_used(tmp_path):
    head = torch.nn.Linear(2, 2)
    validator = types.SimpleNamespace(data_loader=types.SimpleNamespace(dataset=[0, 1]), add_event_handler=None)
    rec = ProbeRecorder(validator, head, tmp_path, params={"train_rows": 5, "val_rows": 2})
    trainer = types.SimpleNamespace(data_loader=types.SimpleNamespace(dataset=[0, 1, 2, 3]))  # one row unreadable
    rec._completed(trainer)
    import json

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["params"]["train_rows"] == 4 and summary["params"]["train_rows_listed"] == 5
    assert summary["params"]["val_rows"] == 2 and summary["skipped_rows"] == 1


def test_sweep_with_a_failed_run_exits_1_listing_it_after_the_others(tmp_path, monkeypatch, capsys):
    from components.fewshot import sweep

    status = {"runs": {"scratch-ic-k1-s0": "done (3 s, mean Dice 0.500)", "pretrained-ic-k1-s0": "failed: x.pt: nope"}}
    monkeypatch.setattr(sweep, "run_sweep", lambda cfg, out, uri: dict(status, tracking_uri="u", experiment="e"))
    split = tmp_path / "split.json"
    split.write_text("{}")
    code = guarded(lambda: sweep.sweep_and_report({"split_file": str(split)}, tmp_path / "out", report=False))
    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines()[0] == "error: 1 of 2 sweep run(s) failed (the others finished):"
    assert "  pretrained-ic-k1-s0: x.pt: nope" in err.splitlines()
    with pytest.raises(RunFailedError):
        sweep.sweep_and_report({"split_file": str(split)}, tmp_path / "out", report=False)


def _dicom_series(folder, n=8):
    import itk

    arr = (np.arange(n * 16 * 16, dtype=np.int16).reshape(n, 16, 16) % 251).astype(np.int16)
    img = itk.image_from_array(arr)
    img.SetSpacing((2.0, 2.0, 3.0))
    folder.mkdir()
    names = [str(folder / f"slice{i:03d}.dcm") for i in range(n)]
    writer = itk.ImageSeriesWriter[type(img), itk.Image[itk.SS, 2]].New(Input=img, FileNames=names)
    writer.SetImageIO(itk.GDCMImageIO.New())
    writer.Update()
    return names


@pytest.mark.parametrize("missing", [False, True])
def test_dicom_series_with_a_missing_slice_is_a_logged_line(tmp_path, missing):
    names = _dicom_series(tmp_path / "series")
    if missing:
        os.remove(names[4])
    catch = _Catch()
    logging.getLogger("mass.data").addHandler(catch)
    try:
        load_volume(tmp_path / "series")
    finally:
        logging.getLogger("mass.data").removeHandler(catch)
    dicom = [ln for ln in catch.lines if "DICOM slices" in ln]
    if missing:
        assert len(dicom) == 1 and dicom[0].startswith(f"{tmp_path / 'series'}: DICOM slices are not evenly spaced")
    else:
        assert dicom == []


def test_maskgen_label_map_with_non_integer_values_is_refused_naming_it(tmp_path, capsys, monkeypatch):
    import json

    from tests.faults._harness import run_bundle

    label = _label_variant(tmp_path, "float.nii.gz", as_float=True)  # 0.5-steps: rounding would invent ids
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "datalist.json").write_text(
        json.dumps({"all": [{"image": str(DEMO / "colin27_t1.nii.gz"), "label": str(label)}]})
    )
    out = run_bundle(
        capsys,
        monkeypatch,
        "mass_maskgen",
        "inference.json",
        "--dataset_dir",
        str(ds),
        "--output_dir",
        str(tmp_path / "m"),
        "--source",
        "labelmap",
    )
    assert out.code == 1 and out.errors == [f"error: 1 volume(s) failed; reasons in {tmp_path / 'm' / 'failures.json'}"]
    (failure,) = json.loads((tmp_path / "m" / "failures.json").read_text())
    assert f"{label}: label map has" in failure["reason"] and "non-integer" in failure["reason"]
    assert not list((tmp_path / "m").glob("*.mset"))


def test_fewshot_split_with_a_support_volume_in_the_test_set_is_refused(tmp_path):
    import json

    from components.checks.errors import VolumeError
    from components.data.splits import load_split

    one = {"image": str(DEMO / "colin27_t1.nii.gz"), "label": str(DEMO / "colin27_seg.nii.gz")}
    other = {"image": str(DEMO / "mni152_t1.nii.gz"), "label": str(DEMO / "mni152_seg.nii.gz")}
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [one], "val": [other], "test": [other]}))
    with pytest.raises(VolumeError, match="is in both 'val' and 'test'"):
        load_split(split)
    split.write_text(json.dumps({"train": [one], "test": [other]}))
    assert load_split(split)["val_is_train"]


def test_sweep_continued_in_a_copied_folder_keeps_its_artifacts_there(tmp_path):
    import shutil

    from components.tracking.store import artifact_location as _artifact_location
    from components.tracking.store import experiment_id as _experiment_id
    from components.tracking.store import tracking_client

    first = tmp_path / "first"
    first.mkdir()
    uri = f"sqlite:///{first / 'mlruns.db'}"
    client = tracking_client(uri)
    run = client.create_run(_experiment_id(client, "mass_fewshot", uri))
    client.log_text(run.info.run_id, "x", "result.json")
    client.set_terminated(run.info.run_id)
    shutil.copytree(first, tmp_path / "copy")
    uri2 = f"sqlite:///{tmp_path / 'copy' / 'mlruns.db'}"
    client2 = tracking_client(uri2)
    exp_id = _experiment_id(client2, "mass_fewshot", uri2)
    assert client2.get_experiment(exp_id).artifact_location == _artifact_location(uri2)
    assert client2.get_run(run.info.run_id).info.artifact_uri.startswith(_artifact_location(uri2))
    new = client2.create_run(exp_id)
    client2.log_text(new.info.run_id, "y", "result.json")
    written = [p for p in tmp_path.rglob("result.json") if new.info.run_id in str(p)]
    assert len(written) == 1 and (tmp_path / "copy" / "mlruns") in written[0].parents  # was: first/mlruns/...


def test_sweep_command_continued_in_a_copied_folder_writes_only_into_the_copy(tmp_path, capsys, monkeypatch, caplog):
    """The sweep run as users run it, its output folder copied, the sweep continued in the copy with one seed
    more: the new run's artifacts land under the copy, the original folder is untouched, and a warning says so."""
    import json
    import shutil

    from tests.faults._harness import run_bundle, tree_hashes

    ds = tmp_path / "ds"
    ds.mkdir()
    pair = {
        n: {"image": str(DEMO / f"{n}_t1.nii.gz"), "label": str(DEMO / f"{n}_seg.nii.gz")}
        for n in ("colin27", "mni152")
    }
    (ds / "split.json").write_text(json.dumps({"train": [pair["colin27"]], "test": [pair["mni152"]]}))
    (ds / "classes.json").write_text(json.dumps({"brain_stem": [16]}))

    def sweep(out, seeds):
        opts = {"dataset_dir": ds, "output_dir": out, "pretrained": "", "report": "False", "sweep_shots": "[1]"}
        opts.update(
            {"sweep_seeds": seeds, "sweep_modes": "['ic']", "spacing": "[6.0,6.0,6.0]", "roi_size": "[32,32,32]"}
        )
        return run_bundle(
            capsys, monkeypatch, "mass_fewshot", "sweep.json", *[x for k, v in opts.items() for x in (f"--{k}", str(v))]
        )

    first = tmp_path / "first"
    assert sweep(first, "[0]").code == 0
    shutil.copytree(first, tmp_path / "copy")
    before = tree_hashes(first)
    with caplog.at_level("WARNING", logger="components.tracking.store"):
        out = sweep(tmp_path / "copy", "[0,1]")
    assert out.code == 0, out.stderr[-2000:]
    assert tree_hashes(first) == before  # nothing written into the folder the copy came from
    new = [p for p in (tmp_path / "copy" / "mlruns").rglob("result.json")]
    assert len(new) == 2  # the copied run's and the new seed's, both under the copy
    assert any("a copied store" in r.getMessage() for r in caplog.records) or "a copied store" in out.stderr
