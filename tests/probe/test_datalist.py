"""Classification datalists: parsing, fault messages, stratified seeded fractions, AUC definitions."""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

from components.probe.datalist import (
    DatalistError,
    check_label_coverage,
    make_splits,
    read_datalist,
    stratified_fraction,
)
from components.probe.metrics import ProbeAUC

CLASSES = ["ventricles", "thalamus", "cerebellum"]


@pytest.fixture()
def images(tmp_path: Path, demo_data: Path) -> list[str]:
    """Three real image files (relative names resolve against the datalist folder)."""
    names = []
    for i, src in enumerate(["colin27_t1.nii.gz", "mni152_t1.nii.gz", "itk_t1.nii.gz"]):
        dst = tmp_path / f"img{i}.nii.gz"
        dst.write_bytes((demo_data / src).read_bytes())
        names.append(dst.name)
    return names


def _write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_csv_multiclass_names_and_indices(tmp_path, images):
    p = _write_csv(
        tmp_path / "d.csv",
        "image,label,modality,split",
        [f"{images[0]},thalamus,MR,train", f"{images[1]},2,CT,val", f"{images[2]},ventricles,,test"],
    )
    items = read_datalist(p, CLASSES, "multiclass")
    assert [it["label"] for it in items] == [1, 2, 0]
    assert [it["modality"] for it in items] == ["MR", "CT", "MR"]
    assert [it["split"] for it in items] == ["train", "val", "test"]
    assert all(Path(it["image"]).is_absolute() and Path(it["image"]).exists() for it in items)


def test_csv_binary_and_multilabel(tmp_path, images):
    p = _write_csv(tmp_path / "b.csv", "image,label", [f"{images[0]},healthy", f"{images[1]},1"])
    assert [it["label"] for it in read_datalist(p, ["healthy", "lesion"], "binary")] == [[0.0], [1.0]]
    p = _write_csv(
        tmp_path / "m.csv", "image,ventricles,thalamus,cerebellum", [f"{images[0]},1,0,1", f"{images[1]},0,0,0"]
    )
    assert [it["label"] for it in read_datalist(p, CLASSES, "multilabel")] == [[1, 0, 1], [0, 0, 0]]
    p = _write_csv(tmp_path / "m2.csv", "image,label", [f"{images[0]},thalamus;cerebellum", f"{images[1]},"])
    assert [it["label"] for it in read_datalist(p, CLASSES, "multilabel")] == [[0, 1, 1], [0, 0, 0]]


def test_json_sections_and_lists(tmp_path, images):
    p = tmp_path / "d.json"
    p.write_text(
        json.dumps(
            {
                "training": [{"image": images[0], "label": "cerebellum"}],
                "validation": [{"image": images[1], "label": ["thalamus"]}],
            }
        )
    )
    items = read_datalist(p, CLASSES, "multilabel")
    assert [(it["split"], it["label"]) for it in items] == [("train", [0, 0, 1]), ("val", [0, 1, 0])]


def test_missing_file_names_the_row(tmp_path, images):
    p = _write_csv(tmp_path / "d.csv", "image,label", [f"{images[0]},thalamus", "nowhere.nii.gz,thalamus"])
    with pytest.raises(DatalistError) as err:
        read_datalist(p, CLASSES)
    msg = str(err.value)
    assert f"{p}, line 3" in msg and "image file not found" in msg and "nowhere.nii.gz" in msg


def test_unknown_label_names_the_row_and_the_value(tmp_path, images):
    p = _write_csv(tmp_path / "d.csv", "image,label", [f"{images[0]},thalamus", f"{images[1]},hippocampus"])
    with pytest.raises(DatalistError, match=r"line 3: unknown label 'hippocampus'; known classes"):
        read_datalist(p, CLASSES)
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"image": images[0], "label": "thalamus"}, {"image": images[1], "label": 7}]))
    with pytest.raises(DatalistError, match=r"entry 1: unknown label 7"):
        read_datalist(p, CLASSES)
    p = _write_csv(tmp_path / "m.csv", "image,ventricles,thalamus,cerebellum", [f"{images[0]},1,maybe,0"])
    with pytest.raises(DatalistError, match=r"line 2: label 'thalamus' must be 0/1"):
        read_datalist(p, CLASSES, "multilabel")


def _items(counts: dict[int, int]) -> list[dict]:
    return [{"image": f"{c}_{i}", "label": c, "row": f"r{c}_{i}"} for c, n in counts.items() for i in range(n)]


def test_fractions_are_stratified_reproducible_and_nested():
    items = _items({0: 100, 1: 40, 2: 20})
    for frac in (0.05, 0.3):
        sub = stratified_fraction(items, frac, seed=3)
        counts = Counter(it["label"] for it in sub)
        assert counts == {0: max(1, round(100 * frac)), 1: max(1, round(40 * frac)), 2: max(1, round(20 * frac))}
        assert [it["row"] for it in sub] == [it["row"] for it in stratified_fraction(items, frac, seed=3)]
    rows = lambda f, s: {it["row"] for it in stratified_fraction(items, f, seed=s)}  # noqa: E731
    assert rows(0.05, 3) <= rows(0.3, 3) <= rows(1.0, 3)
    assert rows(0.3, 3) != rows(0.3, 4)
    assert len(stratified_fraction(items, 1.0, 0)) == len(items)
    with pytest.raises(ValueError):
        stratified_fraction(items, 0.0)


def test_multilabel_fraction_keeps_every_label_combination():
    items = [{"label": [1.0, 0.0], "row": f"a{i}"} for i in range(30)] + [
        {"label": [0.0, 1.0], "row": f"b{i}"} for i in range(3)
    ]
    sub = stratified_fraction(items, 0.05, seed=0)
    assert Counter(tuple(it["label"]) for it in sub) == {(1.0, 0.0): 2, (0.0, 1.0): 1}


def test_split_from_column_or_stratified_seeded():
    items = _items({0: 10, 1: 10})
    for it in items:
        it["split"] = None
    s1, s2 = make_splits(items, 0.2, seed=1), make_splits(items, 0.2, seed=1)
    assert [v["row"] for v in s1["val"]] == [v["row"] for v in s2["val"]]
    assert Counter(v["label"] for v in s1["val"]) == {0: 2, 1: 2} and len(s1["train"]) == 16
    items[0]["split"] = "val"
    assert [v["row"] for v in make_splits(items, 0.2, 0)["val"]] == [items[0]["row"]]


def test_single_class_in_training_fraction_warns_and_val_auc_stays_defined():
    train = [{"label": [1.0, 0.0]}, {"label": [1.0, 0.0]}]  # label 0 all positive, label 1 all negative
    val = [{"label": [1.0, 0.0]}, {"label": [0.0, 1.0]}, {"label": [0.0, 0.0]}]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        defined = check_label_coverage(train, val, ["a", "b"], "multilabel")
    text = " ".join(str(x.message) for x in w)
    assert "'a' has only positive" in text and "'b' has no positive" in text
    assert defined == ["a", "b"]


def test_validation_without_both_classes_is_refused_clearly():
    with pytest.raises(ValueError, match="validation AUC undefined for every label"):
        check_label_coverage(
            [{"label": [0.0]}, {"label": [1.0]}], [{"label": [1.0]}, {"label": [1.0]}], ["neg", "pos"], "binary"
        )
    train = [{"label": 0}, {"label": 1}]
    with pytest.raises(ValueError, match="no validation rows"):
        check_label_coverage(train, [], ["a", "b"], "multiclass")
    with pytest.warns(UserWarning, match=r"validation AUC undefined for \['c'\]"):
        check_label_coverage(train, [{"label": 0}, {"label": 1}], ["a", "b", "c"], "multiclass")


def test_auc_metric_skips_undefined_classes_in_the_mean():
    y_pred = torch.tensor([[0.9, 0.1, 0.2], [0.2, 0.8, 0.1], [0.7, 0.3, 0.4]])
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # class 2 never positive
    per = []
    for j in range(3):
        m = ProbeAUC(j)
        m(y_pred, y)
        per.append(m.aggregate())
    assert per[0] == pytest.approx(1.0) and per[1] == pytest.approx(1.0) and math.isnan(per[2])
    mean = ProbeAUC()
    mean(y_pred, y)
    with pytest.warns(UserWarning, match="mean AUC over 2 of 3 classes"):
        assert mean.aggregate() == pytest.approx(1.0)
    none = ProbeAUC()
    none(y_pred, torch.zeros_like(y))
    with pytest.raises(ValueError, match="validation AUC undefined"):
        none.aggregate()
