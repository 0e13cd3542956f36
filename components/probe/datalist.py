"""Classification datalists for the probe: CSV/JSON parsing, label encoding, splits and fractions.

A row names one image and its label(s); the parsed item is
``{"image": abs_path, "label": <encoded>, "modality": "MR"|"CT"|"PET", "split": str|None, "row": str}``.

Label encoding by ``task`` (``classes`` = ordered class / label names):
- ``"multiclass"``: ``int`` class index (cross-entropy target).
- ``"binary"``: ``[float]`` (0 or 1; ``classes`` = [negative, positive]).
- ``"multilabel"``: ``list[float]`` of length ``len(classes)`` (0/1 per label).

CSV: header with ``image`` and either a ``label`` column (class name or index; for multilabel,
names joined by ``;``) or, for multilabel, one 0/1 column per class name. Optional ``modality``
and ``split`` (train/training, val/validation, test) columns.
JSON: a list of objects with the same keys, or a dict of lists keyed by ``training`` /
``validation`` / ``test`` (or train/val). Relative image paths resolve against the datalist folder.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.checks.errors import OptionError, VolumeError
from components.checks.options import read_json

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
TRUE_WORDS = {"1", "1.0", "true", "yes", "y", "pos", "positive"}
FALSE_WORDS = {"0", "0.0", "false", "no", "n", "neg", "negative", ""}
MODALITIES = ("MR", "CT", "PET")


class DatalistError(VolumeError):
    """A datalist row that cannot be used; ``str(err)`` is ``"<datalist>, <row>: <problem>"``."""


def _flag(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return float(value)
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return 1.0
    if text in FALSE_WORDS:
        return 0.0
    raise DatalistError(where, f"label {name!r} must be 0/1, got {value!r}")


def encode_label(row: Mapping[str, Any], classes: Sequence[str], task: str, where: str) -> int | list[float]:
    """Encode the label(s) of one row (see module docstring); unknown labels raise :class:`DatalistError`."""
    classes = list(classes)
    if task == "multilabel":
        if all(c in row for c in classes) and "label" not in row:
            return [_flag(row[c], where, c) for c in classes]
        if "label" not in row:
            raise DatalistError(where, f"no 'label' entry and no 0/1 column for every label {classes}")
        value = row["label"]
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - set(classes))
            if unknown:
                raise DatalistError(where, f"unknown label(s) {unknown}; known labels: {classes}")
            return [_flag(value.get(c, 0), where, c) for c in classes]
        if isinstance(value, str):
            names = [v.strip() for v in value.replace("|", ";").split(";") if v.strip()]
        elif isinstance(value, Sequence):
            if len(value) == len(classes) and all(isinstance(v, (int, float, bool)) for v in value):
                return [_flag(v, where, c) for v, c in zip(value, classes)]
            names = [str(v) for v in value]
        else:
            raise DatalistError(where, f"cannot read multilabel value {value!r}")
        unknown = sorted(set(names) - set(classes))
        if unknown:
            raise DatalistError(where, f"unknown label(s) {unknown}; known labels: {classes}")
        return [1.0 if c in names else 0.0 for c in classes]

    if "label" not in row or row["label"] is None or str(row["label"]).strip() == "":
        raise DatalistError(where, "missing 'label'")
    value = row["label"]
    text = str(value).strip()
    if text in classes:
        index = classes.index(text)
    elif (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and float(value).is_integer()
        and 0 <= int(value) < len(classes)
    ):
        index = int(value)
    elif text.lstrip("-").isdigit() and 0 <= int(text) < len(classes):
        index = int(text)
    else:
        raise DatalistError(
            where, f"unknown label {value!r}; known classes: {classes} (or indices 0..{len(classes) - 1})"
        )
    if task == "binary":
        if len(classes) != 2:
            raise ValueError(f"a binary task needs classes=[negative, positive], got {classes}")
        return [float(index)]
    if task == "multiclass":
        return index
    raise ValueError(f"task must be 'binary', 'multiclass' or 'multilabel', got {task!r}")


def _rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, raw row) pairs from a CSV or JSON datalist."""
    if not path.is_file():
        raise DatalistError(path, "datalist file does not exist")
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "image" not in [h.strip() for h in reader.fieldnames]:
                raise DatalistError(path, f"CSV header must contain an 'image' column, got {reader.fieldnames}")
            return [
                (
                    f"{path}, line {reader.line_num}",
                    {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k is not None},
                )
                for row in reader
            ]
    if path.suffix.lower() == ".json":
        try:
            content = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DatalistError(path, f"not valid JSON ({e})") from None
        if isinstance(content, list):
            sections = {None: content}
        elif isinstance(content, dict):
            sections = {k: v for k, v in content.items() if isinstance(v, list) and k.lower() in SPLIT_ALIASES}
            if not sections:
                raise DatalistError(
                    path, f"JSON datalist needs a list or sections {sorted(SPLIT_ALIASES)}, got keys {sorted(content)}"
                )
        else:
            raise DatalistError(path, "JSON datalist must be a list or a dict of lists")
        out = []
        for sec, entries in sections.items():
            for i, row in enumerate(entries):
                where = f"{path}, entry {i}" + (f" of section {sec!r}" if sec else "")
                if not isinstance(row, dict):
                    raise DatalistError(where, f"expected an object with 'image', got {row!r}")
                row = dict(row)
                if sec is not None:
                    row.setdefault("split", sec)
                out.append((where, row))
        return out
    raise DatalistError(path, "datalist must be a .csv or .json file")


def read_classes(path: str | os.PathLike) -> list[str]:
    """The class names of a classes file ``{"classes": [...]}``; :class:`VolumeError` naming it otherwise."""
    content = read_json(path, "classes file")
    if not isinstance(content, Mapping) or not isinstance(content.get("classes"), list):
        raise VolumeError(path, 'classes file must hold {"classes": [name, ...]}')
    return [str(c) for c in content["classes"]]


def read_datalist(
    path: str | os.PathLike,
    classes: Sequence[str],
    task: str = "multiclass",
    default_modality: str = "MR",
    base_dir: str | os.PathLike | None = None,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Parse a CSV/JSON classification datalist; every bad row raises :class:`DatalistError` naming it."""
    path = Path(path)
    base = Path(base_dir) if base_dir else path.parent
    items: list[dict[str, Any]] = []
    first_row: dict[str, str] = {}
    for where, row in _rows(path):
        image = row.get("image")
        if not image:
            raise DatalistError(where, "missing 'image'")
        image_path = Path(str(image))
        if not image_path.is_absolute():
            image_path = base / image_path
        if check_files and not image_path.exists():
            raise DatalistError(where, f"image file not found: {image_path}")
        modality = str(row.get("modality") or default_modality).strip().upper()
        modality = "MR" if modality == "MRI" else modality
        if modality not in MODALITIES:
            raise DatalistError(where, f"unknown modality {row.get('modality')!r}; use one of {MODALITIES}")
        split = row.get("split")
        if split not in (None, ""):
            if str(split).strip().lower() not in SPLIT_ALIASES:
                raise DatalistError(where, f"unknown split {split!r}; use train, val or test")
            split = SPLIT_ALIASES[str(split).strip().lower()]
        else:
            split = None
        resolved = str(image_path.resolve())
        if resolved in first_row:
            raise DatalistError(
                where, f"image {resolved} is listed again (first at {first_row[resolved]}); each image once"
            )
        first_row[resolved] = where
        items.append(
            {
                "image": resolved,
                "label": encode_label(row, classes, task, where),
                "modality": modality,
                "split": split,
                "row": where,
            }
        )
    if not items:
        raise DatalistError(path, "datalist has no rows")
    return items


def stratum(label: int | Sequence[float]) -> Any:
    """Hashable stratification key of an encoded label."""
    return label if isinstance(label, int) else tuple(int(v) for v in label)


def stratified_fraction(items: Sequence[Mapping[str, Any]], fraction: float, seed: int = 0) -> list[dict[str, Any]]:
    """Keep ``fraction`` of each label stratum (at least one item per stratum), in original order.

    Reproducible for a seed; for one seed, a smaller fraction is a subset of a larger one.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction >= 1.0:
        return [dict(it) for it in items]
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        groups[stratum(it["label"])].append(i)
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for key in sorted(groups, key=repr):
        idx = groups[key]
        order = rng.permutation(len(idx))
        n = max(1, int(round(fraction * len(idx))))
        keep.extend(idx[j] for j in order[:n])
    return [dict(items[i]) for i in sorted(keep)]


def make_splits(
    items: Sequence[Mapping[str, Any]], val_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """``{"train", "val", "test"}`` lists: from the ``split`` column, else a stratified seeded split."""
    out: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    unsplit: list[dict[str, Any]] = []
    for it in items:
        (out[it["split"]] if it.get("split") else unsplit).append(dict(it))
    if unsplit and not out["val"]:
        val = stratified_fraction(unsplit, val_fraction, seed) if val_fraction > 0 else []
        val_rows = {v["row"] for v in val}
        out["val"] = val
        out["train"] += [it for it in unsplit if it["row"] not in val_rows]
    else:
        out["train"] += unsplit
    if not out["train"]:
        raise OptionError("datalist", "no training rows")
    return out


def _label_matrix(items: Sequence[Mapping[str, Any]], num_classes: int, task: str) -> np.ndarray:
    if task == "multiclass":
        m = np.zeros((len(items), num_classes))
        for i, it in enumerate(items):
            m[i, int(it["label"])] = 1.0
        return m
    return np.asarray([list(it["label"]) for it in items], dtype=float).reshape(len(items), -1)


def check_label_coverage(
    train: Sequence[Mapping[str, Any]], val: Sequence[Mapping[str, Any]], classes: Sequence[str], task: str
) -> list[str]:
    """Warn about labels with a single class (all 0 or all 1) in the training fraction or in validation.

    Returns the names whose validation AUC is defined. Raises ``ValueError`` (a clear refusal)
    when validation is empty or no label has both classes in it, since no AUC can be computed.
    """
    names = list(classes) if task != "binary" else [classes[1]]
    n = len(names)
    tr = _label_matrix(train, n, task)
    for j, name in enumerate(names):
        pos = int(tr[:, j].sum()) if len(tr) else 0
        if pos == 0 or pos == len(tr):
            state = "no positive" if pos == 0 else "only positive"
            warnings.warn(
                f"label {name!r} has {state} examples in the training fraction ({len(tr)} rows); "
                "its output cannot be learnt from these data",
                stacklevel=2,
            )
    if not val:
        raise OptionError(
            "datalist",
            "no validation rows: the validation AUC that selects the best head is undefined; "
            "add a 'split' column with 'val' rows or set val_fraction > 0",
        )
    va = _label_matrix(val, n, task)
    defined = [name for j, name in enumerate(names) if 0 < va[:, j].sum() < len(va)]
    undefined = [name for name in names if name not in defined]
    if not defined:
        raise OptionError(
            "datalist",
            f"validation AUC undefined for every label {names}: each has a single class in the "
            f"{len(va)} validation rows; add validation rows with both classes",
        )
    if undefined:
        warnings.warn(
            f"validation AUC undefined for {undefined} (single class in validation); the mean AUC "
            f"averages the {len(defined)} defined labels only",
            stacklevel=2,
        )
    return defined
