"""Datalists and checked loading of 3D volumes, shared by every MASS bundle.

A *datalist* is MONAI's list of dicts, e.g. ``[{"image": "/d/a.nii.gz", "label": "/d/a_seg.nii.gz"}]``.
It can be built from a folder of volumes, a Medical Segmentation Decathlon ``dataset.json`` or a
datalist JSON (:func:`build_datalist`). Volumes are read with MONAI's readers (NIfTI via nibabel;
NRRD, MHA and DICOM series via ITK), checked (:class:`CheckVolumed`), reoriented to RAS and
optionally resampled (:func:`load_transforms`). Every problem raises :class:`VolumeError` whose
message starts with the offending path.

Example::

    from monai.transforms import Compose
    from components.data.loading import build_datalist, load_transforms

    data = build_datalist("data/demo/datalist.json", section="mri")
    load = Compose(load_transforms(("image", "label"), spacing=(2.0, 2.0, 2.0)))
    sample = load(data[0])          # sample["image"]: MetaTensor [1, X, Y, Z], RAS, 2 mm
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, load_decathlon_datalist
from monai.transforms import EnsureTyped, LoadImaged, MapTransform, Orientationd, Spacingd, Transform

__all__ = [
    "VOLUME_SUFFIXES",
    "VolumeError",
    "datalist_from_folder",
    "datalist_from_decathlon",
    "datalist_from_json",
    "build_datalist",
    "check_files_exist",
    "LoadVolumed",
    "CheckVolumed",
    "load_transforms",
    "load_volume",
    "volume_error_of",
]

_LPS_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel/MONAI axis-code convention
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


class VolumeError(ValueError):
    """A volume or datalist entry that cannot be used; ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _is_volume(path: Path) -> bool:
    if path.is_dir():  # a DICOM series is a folder of slices
        return any(p.suffix.lower() == ".dcm" for p in path.iterdir())
    name = path.name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def _stem(path: Path) -> str:
    name = path.name
    for s in VOLUME_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


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
        candidates = [p for p in candidates if not _stem(p).endswith(label_suffix)]
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
                ext = img.name[len(_stem(img)) :]
                lab = img.with_name(f"{_stem(img)}{label_suffix}{ext}")
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


class LoadVolumed(LoadImaged):
    """``LoadImaged`` (channel first) whose failures become :class:`VolumeError` naming the file."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("ensure_channel_first", True)
        kwargs.setdefault("image_only", True)
        super().__init__(keys, allow_missing_keys=allow_missing_keys, **kwargs)

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        for key in self.key_iterator(dict(data)):
            path = data[key]
            if isinstance(path, (str, os.PathLike)) and not os.path.exists(path):
                raise VolumeError(path, "file does not exist")
        try:
            return super().__call__(data, reader)
        except VolumeError:
            raise
        except Exception as e:  # readers raise many types (OSError, EOFError, RuntimeError, ...)
            name = next(
                (data[k] for k in self.key_iterator(dict(data)) if isinstance(data[k], (str, os.PathLike))), "?"
            )
            for k in self.key_iterator(dict(data)):  # name the file that actually fails
                try:
                    LoadImaged(k, ensure_channel_first=False, image_only=True)({k: data[k]})
                except Exception:
                    name = data[k]
                    break
            raise VolumeError(
                name, f"cannot be read as a volume ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            ) from e


def _source(t: Any, fallback: str) -> str:
    meta = getattr(t, "meta", None) or {}
    return str(meta.get("filename_or_obj", fallback))


class CheckVolumed(MapTransform):
    """Reject unusable volumes with a :class:`VolumeError` naming the file.

    Checks (after ``LoadVolumed``; arrays are channel-first ``[C, X, Y, Z]``): one channel and three
    spatial dimensions, no empty dimension, not all-NaN (a few NaN/inf voxels are replaced by the
    finite minimum, with a warning), optionally not constant, and every non-image key on exactly the
    grid (shape and affine) of ``image_key``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        allow_constant: bool = True,
        affine_atol: float = 1e-3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.allow_constant = allow_constant
        self.affine_atol = affine_atol

    def _check_one(self, key: Hashable, x: Any) -> Any:
        src = _source(x, str(key))
        shape = tuple(x.shape)
        if 0 in shape:
            raise VolumeError(src, f"is empty (shape {shape[1:] if len(shape) > 1 else shape})")
        if len(shape) == 3 and shape[0] == 1:
            raise VolumeError(src, f"is a 2D image (shape {shape[1:]}); a 3D volume is required")
        if len(shape) != 4:
            raise VolumeError(src, f"has {len(shape) - 1} spatial dimensions (shape {shape}); a 3D volume is required")
        if shape[0] != 1:
            raise VolumeError(
                src, f"is 4D or multi-channel ({shape[0]} volumes of {shape[1:]}); a single 3D volume is required"
            )
        if min(shape[1:]) == 0:
            raise VolumeError(src, f"is empty (shape {shape[1:]})")
        if min(shape[1:]) < 2:
            raise VolumeError(src, f"is a single slice (shape {shape[1:]}); a 3D volume is required")
        if (
            torch.is_tensor(x)
            and x.is_floating_point()
            or isinstance(x, np.ndarray)
            and np.issubdtype(x.dtype, np.floating)
        ):
            finite = torch.isfinite(torch.as_tensor(x))
            if not bool(finite.any()):
                raise VolumeError(src, "all voxels are NaN/inf")
            if not bool(finite.all()):
                n_bad = int((~finite).sum())
                warnings.warn(f"{src}: {n_bad} NaN/inf voxels replaced by the finite minimum", stacklevel=2)
                lo = torch.as_tensor(x)[finite].min()
                x = torch.where(finite, torch.as_tensor(x), lo)
        if key == self.image_key and not self.allow_constant and float(x.max()) == float(x.min()):
            raise VolumeError(src, f"has constant intensity ({float(x.max())})")
        return x

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._check_one(key, d[key])
        ref = d.get(self.image_key)
        if ref is None:
            return d
        for key in self.key_iterator(d):
            if key == self.image_key:
                continue
            other = d[key]
            if tuple(other.shape[1:]) != tuple(ref.shape[1:]):
                raise VolumeError(
                    _source(other, str(key)),
                    f"grid {tuple(other.shape[1:])} does not match image "
                    f"{_source(ref, self.image_key)} grid {tuple(ref.shape[1:])}",
                )
            a_ref, a_other = getattr(ref, "affine", None), getattr(other, "affine", None)
            if (
                a_ref is not None
                and a_other is not None
                and not np.allclose(np.asarray(a_ref), np.asarray(a_other), atol=self.affine_atol)
            ):
                raise VolumeError(
                    _source(other, str(key)),
                    f"affine (position/spacing/orientation) does not match image {_source(ref, self.image_key)}",
                )
        return d


def load_transforms(
    keys: Sequence[str] = ("image", "label"),
    spacing: Sequence[float] | None = None,
    axcodes: str = "RAS",
    image_key: str = "image",
    allow_constant: bool = True,
    allow_missing_keys: bool = False,
) -> list[Transform]:
    """Load, check, reorient to ``axcodes`` and (if ``spacing``) resample: a list for ``Compose``.

    The image becomes float32 and is resampled bilinearly; every other key (labels) with nearest
    neighbour, so label values are preserved.
    """
    keys = list(keys)
    xs: list[Transform] = [
        LoadVolumed(keys, allow_missing_keys=allow_missing_keys),
        CheckVolumed(keys, image_key=image_key, allow_constant=allow_constant, allow_missing_keys=allow_missing_keys),
        EnsureTyped(image_key, dtype=torch.float32, allow_missing_keys=True),
        Orientationd(keys, axcodes=axcodes, labels=_LPS_RAS_LABELS, allow_missing_keys=allow_missing_keys),
    ]
    if spacing is not None:
        modes = ["bilinear" if k == image_key else "nearest" for k in keys]
        xs.append(Spacingd(keys, pixdim=tuple(spacing), mode=modes, allow_missing_keys=allow_missing_keys))
    return xs


def load_volume(
    path: str | os.PathLike,
    spacing: Sequence[float] | None = None,
    axcodes: str = "RAS",
    allow_constant: bool = True,
) -> MetaTensor:
    """One checked volume as a ``MetaTensor [1, X, Y, Z]`` (RAS, optionally resampled)."""
    out: Any = {"image": str(path)}
    for t in load_transforms(("image",), spacing=spacing, axcodes=axcodes, allow_constant=allow_constant):
        out = t(out)
    return out["image"]


def volume_error_of(exc: BaseException) -> VolumeError | None:
    """The :class:`VolumeError` behind ``exc`` (MONAI's ``Compose`` re-raises transform errors as
    ``RuntimeError("applying transform ...")`` chained to the original), or ``None``."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, VolumeError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
