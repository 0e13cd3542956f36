"""Split files of labelled volumes (``{"train": [...], "val": [...], "test": [...]}``), fixed once per dataset
so every run sees the same test set, and the support volumes drawn from their training part.

Example::

    split = load_split("split.json")
    support = sample_support(split["train"], shots=1, seed=0)
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from components.checks.errors import VolumeError
from components.checks.options import read_json
from components.data.datalist import build_datalist
from components.io.atomic import atomic_json

__all__ = ["make_split", "load_split", "validation_items", "check_labelled", "sample_support"]


def make_split(
    source: str | os.PathLike | Sequence[Mapping[str, Any]],
    out_path: str | os.PathLike,
    n_test: int,
    n_val: int = 0,
    seed: int = 0,
    group_key: str = "patient",
) -> dict[str, list[dict[str, Any]]]:
    """Fix a patient-level train/val/test split and write it as JSON (temp file, then rename).

    Entries sharing ``group_key`` (default: one patient per image) always land in the same part.
    """
    data = build_datalist(source) if isinstance(source, (str, os.PathLike)) else [dict(d) for d in source]
    check_labelled(data)
    groups: dict[str, list[dict[str, Any]]] = {}
    for d in data:
        groups.setdefault(str(d.get(group_key, d["image"])), []).append(d)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    if n_test + n_val >= len(keys):
        raise ValueError(f"{len(keys)} patients cannot give {n_test} test + {n_val} val and >= 1 train")
    parts = {"test": keys[:n_test], "val": keys[n_test : n_test + n_val], "train": keys[n_test + n_val :]}
    split = {k: [d for g in v for d in groups[g]] for k, v in parts.items()}
    atomic_json(out_path, split, indent=2)
    return split


def load_split(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Read a split file; relative paths resolve against its folder; every label must exist.

    An empty or missing ``val`` part falls back to ``train`` (noted under ``"val_is_train"``).
    """
    path = Path(path)
    if not path.is_file():
        raise VolumeError(path, "split file does not exist")
    content = read_json(path, "split file")
    if not isinstance(content, dict):
        raise VolumeError(path, "split file must hold an object with 'train', 'val' and 'test' lists")
    split: dict[str, Any] = {}
    for part in ("train", "val", "test"):
        if part in content and content[part]:
            split[part] = build_datalist(path, section=part, check_files=False)
            check_labelled(split[part])
        else:
            split[part] = []
    if not split["train"] or not split["test"]:
        raise VolumeError(path, "split needs non-empty 'train' and 'test' parts")
    test = {os.path.realpath(d["image"]) for d in split["test"]}
    for part in ("train", "val"):
        both = sorted({d["image"] for d in split[part] if os.path.realpath(d["image"]) in test})
        if both:
            raise VolumeError(
                path, f"{both[0]} is in both '{part}' and 'test' ({len(both)} such); a test case must be unseen"
            )
    split["val_is_train"] = not split["val"]
    if not split["val"]:
        split["val"] = list(split["train"])
    return split


def validation_items(split_file: str | os.PathLike, fallback: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ``val`` part of ``split_file`` (:func:`load_split`), or ``fallback`` (e.g. the training volumes) when
    there is no split file: MONAI Label's stock apps hand a bundle their labelled images, not a split."""
    if os.path.isfile(split_file):
        return load_split(split_file)["val"]
    return [dict(d) for d in fallback]


def check_labelled(data: Sequence[Mapping[str, Any]]) -> None:
    """Raise :class:`VolumeError` naming the file when an image or its label is missing."""
    for i, d in enumerate(data):
        if "label" not in d or not d["label"]:
            raise VolumeError(d.get("image", f"entry {i}"), "has no 'label' entry; few-shot volumes need labels")
        for key in ("image", "label"):
            if not os.path.exists(d[key]):
                what = "label file" if key == "label" else "image file"
                raise VolumeError(d[key], f"{what} does not exist (for image {d['image']})")


def sample_support(train: Sequence[Mapping[str, Any]], shots: int, seed: int) -> list[dict[str, Any]]:
    """K = ``shots`` training volumes drawn without replacement, reproducible for a given ``seed``."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    if shots > len(train):
        raise ValueError(f"{shots} shots requested but the training split has only {len(train)} volumes")
    idx = sorted(random.Random(1000 * seed + shots).sample(range(len(train)), shots))
    return [dict(train[i]) for i in idx]
