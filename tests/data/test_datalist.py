"""Datalists from folders (label suffix), MSD dataset.json (MONAI's parser) and datalist JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from components.checks.errors import VolumeError
from components.data.datalist import build_datalist


def test_datalist_from_folder_with_label_suffix(tmp_path: Path, shared_data: Path) -> None:
    for n in ("a", "b"):
        shutil.copy(shared_data / "mri/itk_t1.nii.gz", tmp_path / f"{n}.nii.gz")
        shutil.copy(shared_data / "mri/itk_samseg.nii.gz", tmp_path / f"{n}_seg.nii.gz")
    data = build_datalist(tmp_path, label_suffix="_seg")
    assert [Path(d["image"]).name for d in data] == ["a.nii.gz", "b.nii.gz"]
    assert [Path(d["label"]).name for d in data] == ["a_seg.nii.gz", "b_seg.nii.gz"]
    (tmp_path / "b_seg.nii.gz").unlink()
    with pytest.raises(VolumeError, match=r"b_seg\.nii\.gz: label file for image b\.nii\.gz does not exist"):
        build_datalist(tmp_path, label_suffix="_seg")


def test_datalist_from_decathlon_and_json(tmp_path: Path, demo_data: Path) -> None:
    msd = {
        "name": "demo",
        "modality": {"0": "MRI"},
        "labels": {"0": "bg"},
        "training": [{"image": str(demo_data / "colin27_t1.nii.gz"), "label": str(demo_data / "colin27_seg.nii.gz")}],
        "test": [],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(msd))
    data = build_datalist(tmp_path / "dataset.json")
    assert data[0]["label"].endswith("colin27_seg.nii.gz")
    demo = build_datalist(demo_data / "datalist.json", section="mri")
    assert len(demo) == 3 and all(Path(d["image"]).is_file() and Path(d["label"]).is_file() for d in demo)
    with pytest.raises(VolumeError, match="no section 'nope'"):
        build_datalist(demo_data / "datalist.json", section="nope")


def test_datalist_missing_file_named(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text(json.dumps([{"image": "gone.nii.gz"}]))
    with pytest.raises(VolumeError, match=r"gone\.nii\.gz: file does not exist \(datalist entry 0"):
        build_datalist(tmp_path / "list.json")
    with pytest.raises(VolumeError, match="nowhere: dataset folder or datalist file does not exist"):
        build_datalist(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeError, match="no volumes found"):
        build_datalist(tmp_path / "empty")


def test_decathlon_relative_paths_resolve_against_the_json(tmp_path: Path, demo_data: Path) -> None:
    for name in ("colin27_t1", "colin27_seg"):
        shutil.copy(demo_data / f"{name}.nii.gz", tmp_path / f"{name}.nii.gz")
    msd = {
        "modality": {"0": "MRI"},
        "training": [{"image": "./colin27_t1.nii.gz", "label": "./colin27_seg.nii.gz"}],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(msd))
    data = build_datalist(tmp_path / "dataset.json")
    assert data == [{"image": str(tmp_path / "colin27_t1.nii.gz"), "label": str(tmp_path / "colin27_seg.nii.gz")}]
