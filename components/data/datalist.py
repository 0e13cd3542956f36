"""Datalists: MONAI's list of dicts, e.g. ``[{"image": "/d/a.nii.gz", "label": "/d/a_seg.nii.gz"}]``.

:func:`build_datalist` builds one from a folder of volumes (:func:`datalist_from_folder`), a Medical
Segmentation Decathlon ``dataset.json`` (:func:`datalist_from_decathlon`, MONAI's
``load_decathlon_datalist``) or a datalist JSON (:func:`datalist_from_json`). Every problem raises
:class:`~components.checks.errors.VolumeError` whose message starts with the offending path. Loading
the listed files is :mod:`components.data.loading`.

Example::

    from components.data.datalist import build_datalist

    data = build_datalist("data/demo/datalist.json", section="mri")   # [{"image": abs path, "label": ...}]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.data import load_decathlon_datalist

from components.checks.errors import VolumeError
from components.io.naming import VOLUME_SUFFIXES, has_volume_suffix, volume_stem

__all__ = [
    "datalist_from_folder",
    "datalist_from_decathlon",
    "datalist_from_json",
    "build_datalist",
    "check_files_exist",
]


def _is_volume(path: Path) -> bool:
    if path.is_dir():  # a DICOM series is a folder of slices
        return any(p.suffix.lower() == ".dcm" for p in path.iterdir())
    return has_volume_suffix(path)


def datalist_from_folder(
    folder: str | os.PathLike,
    label_dir: str | os.PathLike | None = None,
    label_suffix: str | None = None,
) -> list[dict[str, str]]:
    """One entry per volume file (or DICOM series folder) in ``folder``, sorted by name.

    Labels are optional: a file of the same name in ``label_dir``, or ``<stem><label_suffix>.<ext>``
    beside the image (such label files are then not listed as images). An image without its label
    raises :class:`VolumeError`.
    """
    root = Path(folder)
    if not root.is_dir():
        raise VolumeError(root, "dataset folder does not exist")
    candidates = sorted(p for p in root.iterdir() if _is_volume(p))
    if label_suffix:
        candidates = [p for p in candidates if not volume_stem(p).endswith(label_suffix)]
    if not candidates:
        raise VolumeError(
            root, f"no volumes found (expected files ending in {', '.join(VOLUME_SUFFIXES)} or DICOM series folders)"
        )
    out = []
    for img in candidates:
        item = {"image": str(img.resolve())}
        if label_dir is not None or label_suffix:
            if label_dir is not None:
                lab = Path(label_dir) / img.name
            else:
                ext = img.name[len(volume_stem(img)) :]
                lab = img.with_name(f"{volume_stem(img)}{label_suffix}{ext}")
            if not lab.exists():
                raise VolumeError(lab, f"label file for image {img.name} does not exist")
            item["label"] = str(lab.resolve())
        out.append(item)
    return out


def _resolve(entry: Any, base: Path) -> Any:
    if isinstance(entry, str) and entry and not os.path.isabs(entry):
        return str((base / entry).resolve())
    return entry


def datalist_from_json(path: str | os.PathLike, section: str | None = None) -> list[dict[str, Any]]:
    """A datalist JSON: a list of dicts, or a dict of such lists picked by ``section``.

    Relative ``image``/``label`` paths are resolved against the JSON file's folder.
    """
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise VolumeError(path, "datalist file does not exist") from None
    except json.JSONDecodeError as e:
        raise VolumeError(path, f"datalist is not valid JSON ({e})") from None
    if isinstance(content, dict):
        if section is None:
            lists = [k for k, v in content.items() if isinstance(v, list)]
            if len(lists) != 1:
                raise VolumeError(path, f"datalist has sections {lists}; choose one with section=")
            section = lists[0]
        if section not in content:
            raise VolumeError(path, f"datalist has no section {section!r} (sections: {sorted(content)})")
        content = content[section]
    if not isinstance(content, list) or not all(isinstance(d, dict) and "image" in d for d in content):
        raise VolumeError(path, "datalist must be a list of objects with an 'image' entry")
    base = path.parent
    return [{k: _resolve(v, base) if k in ("image", "label") else v for k, v in d.items()} for d in content]


def datalist_from_decathlon(path: str | os.PathLike, section: str = "training") -> list[dict[str, Any]]:
    """A Medical Segmentation Decathlon ``dataset.json`` section (MONAI's own parser)."""
    path = Path(path)
    if not path.is_file():
        raise VolumeError(path, "dataset.json does not exist")
    try:
        return load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=section)
    except (ValueError, KeyError) as e:
        raise VolumeError(path, f"cannot read section {section!r} ({e})") from None


def _is_decathlon(path: Path) -> bool:
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(content, dict) and "modality" in content and ("training" in content or "test" in content)


def build_datalist(
    source: str | os.PathLike,
    section: str | None = None,
    label_dir: str | os.PathLike | None = None,
    label_suffix: str | None = None,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Datalist from a folder, an MSD ``dataset.json`` or a datalist JSON (picked from ``source``)."""
    src = Path(source)
    if not src.exists():
        raise VolumeError(src, "dataset folder or datalist file does not exist")
    if src.is_dir():
        data = datalist_from_folder(src, label_dir=label_dir, label_suffix=label_suffix)
    elif src.suffix.lower() == ".json":
        if not src.exists():
            raise VolumeError(src, "datalist file does not exist")
        data = (
            datalist_from_decathlon(src, section or "training")
            if _is_decathlon(src)
            else datalist_from_json(src, section)
        )
    else:
        raise VolumeError(src, "expected a folder of volumes or a .json datalist")
    if check_files:
        check_files_exist(data)
    return data


def check_files_exist(datalist: Sequence[Mapping[str, Any]], keys: Sequence[str] = ("image", "label")) -> None:
    """Raise :class:`VolumeError` for the first listed file that does not exist."""
    for i, item in enumerate(datalist):
        for k in keys:
            p = item.get(k)
            if isinstance(p, str) and not os.path.exists(p):
                raise VolumeError(p, f"file does not exist (datalist entry {i}, key {k!r})")
