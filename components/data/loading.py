"""Checked loading of 3D volumes, shared by every MASS bundle.

Volumes are read with MONAI's readers (NIfTI via nibabel; NRRD, MHA and DICOM series via ITK),
checked (:class:`CheckVolumed`), reoriented to RAS and optionally resampled (:func:`load_transforms`).
Every problem raises :class:`~components.checks.errors.VolumeError` whose message starts with the
offending path. Datalists (what to load) are :mod:`components.data.datalist`.

Example::

    from monai.transforms import Compose
    from components.data.datalist import build_datalist
    from components.data.loading import load_transforms

    data = build_datalist("data/demo/datalist.json", section="mri")
    load = Compose(load_transforms(("image", "label"), spacing=(2.0, 2.0, 2.0)))
    sample = load(data[0])          # sample["image"]: MetaTensor [1, X, Y, Z], RAS, 2 mm
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    EnsureChannelFirst,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Orientationd,
    Spacingd,
    Transform,
)
from monai.utils import ensure_tuple

from components.checks.errors import VolumeError

__all__ = [
    "LoadVolumed",
    "CheckVolumed",
    "load_transforms",
    "load_volume",
    "ResampleSpacingd",
    "spacing_warning",
    "dicom_slice_warning",
    "PLAUSIBLE_SPACING_MM",
    "check_label_values",
]

_LPS_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # nibabel/MONAI axis-code convention
#: voxel spacings (mm) outside this range are warned about: a wrong header unit or a missing sform
PLAUSIBLE_SPACING_MM = (0.05, 20.0)

#: warnings about a volume go to this logger; maskgen copies them into its ``warnings.json``
logger = logging.getLogger("mass.data")


def dicom_slice_warning(folder: str | os.PathLike) -> str | None:
    """The warning line for a DICOM series folder whose slices are not evenly spaced (a missing slice,
    mixed series), or None. ITK reads such a series anyway and only prints its own warning."""
    try:
        import itk

        names = list(itk.GDCMSeriesFileNames.New(Directory=str(folder)).GetInputFileNames())
        if len(names) < 3:
            return None
        positions = []
        for name in names:
            io = itk.GDCMImageIO.New()
            io.SetFileName(name)
            io.ReadImageInformation()
            value = io.GetMetaDataDictionary()["0020|0032"]
            positions.append([float(v) for v in str(value).replace("\\", " ").split()])
    except Exception:  # not a readable series: the loader reports that
        return None
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        return None
    axis = pos[-1] - pos[0]
    length = float(np.linalg.norm(axis))
    if length == 0:
        return f"{folder}: all {len(names)} DICOM slices share one position; not a 3D series"
    gaps = np.diff(pos @ (axis / length))
    step = float(np.median(np.abs(gaps)))
    if step > 0 and float(np.abs(np.abs(gaps) - step).max()) <= 0.01 * step:
        return None
    return (
        f"{folder}: DICOM slices are not evenly spaced (gaps {float(np.abs(gaps).min()):.3g}-"
        f"{float(np.abs(gaps).max()):.3g} mm over {len(names)} slices); a slice may be missing"
    )


def spacing_warning(src: str, affine: Any) -> str | None:
    """The warning line for an implausible voxel spacing (outside :data:`PLAUSIBLE_SPACING_MM`), or None."""
    if affine is None:
        return None
    a = np.asarray(affine, dtype=np.float64)
    if a.shape[0] < 4:
        return None
    sp = np.sqrt((a[:3, :3] ** 2).sum(0))
    lo, hi = PLAUSIBLE_SPACING_MM
    if np.all((sp >= lo) & (sp <= hi)):
        return None
    shown = " x ".join(f"{v:g}" for v in sp)
    return f"{src}: implausible voxel spacing {shown} mm (expected {lo:g}-{hi:g} mm); check the header's units and sform/qform"


def _describe(value: Any) -> str:
    """A short name for a value that is not a path (never the value itself: it may be a whole volume)."""
    shape = getattr(value, "shape", None)
    return f"<in-memory {type(value).__name__}{' of shape ' + str(tuple(shape)) if shape is not None else ''}>"


def _nifti_header(path: str | os.PathLike) -> Any:
    """The NIfTI image of ``path`` with only its header read; :class:`VolumeError` naming the file otherwise."""
    import nibabel as nib

    if not os.path.exists(path):
        raise VolumeError(path, "file does not exist")
    try:
        return nib.load(str(path))
    except Exception as e:
        raise VolumeError(
            path, f"cannot be read as a volume ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from e


def check_label_grid(image: str | os.PathLike, label: str | os.PathLike) -> None:
    """:class:`VolumeError` naming ``label`` when, by the NIfTI headers alone, it is not on ``image``'s grid
    (voxel shape, or affine within 1e-3); files of other formats are left to :class:`CheckVolumed`."""
    if not all(str(p).endswith((".nii", ".nii.gz")) for p in (image, label)):
        return
    img, lab = _nifti_header(image), _nifti_header(label)
    if tuple(lab.shape[:3]) != tuple(img.shape[:3]):
        raise VolumeError(label, f"grid {tuple(lab.shape[:3])} does not match image {image} {tuple(img.shape[:3])}")
    if not np.allclose(lab.affine, img.affine, atol=1e-3):
        raise VolumeError(label, f"affine (position/spacing/orientation) does not match image {image}")


class LoadVolumed(LoadImaged):
    """``LoadImaged`` (channel first) whose failures become :class:`VolumeError` naming the file.

    A key may also hold a volume already in memory (a MONAI ``MetaTensor``, a tensor or a NumPy array,
    ``[X, Y, Z]`` or channel-first ``[1, X, Y, Z]``), as MONAI Deploy's bundle operator and MONAI Label
    pass them: it is used as is (made channel-first with MONAI ``EnsureChannelFirst``, which reads the
    ``original_channel_dim`` metadata), so one preprocessing serves files and in-memory images.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("ensure_channel_first", True)
        kwargs.setdefault("image_only", True)
        super().__init__(keys, allow_missing_keys=allow_missing_keys, **kwargs)
        self.channel_first = bool(kwargs["ensure_channel_first"])

    def _in_memory(self, value: Any) -> MetaTensor:
        x = value if isinstance(value, MetaTensor) else MetaTensor(torch.as_tensor(np.asarray(value)))
        x.meta.setdefault("filename_or_obj", _describe(value))  # what error messages name
        if x.ndim == 3 and "original_channel_dim" not in x.meta:
            x.meta["original_channel_dim"] = float("nan")  # MONAI's marker for "no channel dimension"
        if self.channel_first and (x.ndim == 3 or x.meta.get("original_channel_dim") is not None):
            try:
                x = cast(MetaTensor, EnsureChannelFirst()(x))
            except ValueError as e:
                raise VolumeError(
                    _describe(value), f"cannot be used as a volume ({str(e).splitlines()[0][:200]})"
                ) from e
        return x

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        d = dict(data)
        in_memory = [k for k in self.key_iterator(d) if isinstance(d[k], (torch.Tensor, np.ndarray))]
        for key in in_memory:
            d[key] = self._in_memory(d[key])
        paths = {k: d[k] for k in self.key_iterator(d) if k not in in_memory}
        if not paths:
            return d
        for path in paths.values():
            if isinstance(path, (str, os.PathLike)) and not os.path.exists(path):
                raise VolumeError(path, "file does not exist")
            if isinstance(path, (str, os.PathLike)) and os.path.isdir(path):
                line = dicom_slice_warning(path)
                if line:
                    logger.warning(line)
        try:
            loaded = super().__call__({k: v for k, v in d.items() if k not in in_memory}, reader)
        except VolumeError:
            raise
        except Exception as e:  # readers raise many types (OSError, EOFError, RuntimeError, ...)
            name = next((str(v) for v in paths.values() if isinstance(v, (str, os.PathLike))), None)
            for k, v in paths.items():  # name the file that actually fails
                try:
                    LoadImaged(k, ensure_channel_first=False, image_only=True)({k: v})
                except Exception:
                    name = str(v) if isinstance(v, (str, os.PathLike)) else _describe(v)
                    break
            raise VolumeError(
                name or _describe(next(iter(paths.values()))),
                f"cannot be read as a volume ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
            ) from e
        loaded.update({k: d[k] for k in in_memory})
        return loaded


def _code(v: Any) -> int | None:
    try:
        return int(np.asarray(v).reshape(-1)[0]) if v is not None else None
    except (TypeError, ValueError, IndexError):
        return None


def _source(t: Any, fallback: str) -> str:
    meta = getattr(t, "meta", None) or {}
    return str(meta.get("filename_or_obj", fallback))


class CheckVolumed(MapTransform):
    """Reject unusable volumes with a :class:`VolumeError` naming the file.

    Checks (after ``LoadVolumed``; arrays are channel-first ``[C, X, Y, Z]``): one channel and three
    spatial dimensions, no empty dimension, not all-NaN (a few NaN/inf voxels are replaced by the
    finite minimum, with a warning), optionally not constant, every non-image key on exactly the
    grid (shape and affine) of ``image_key``, and the ``label_keys`` holding whole class ids only
    (:func:`check_label_values`).
    """

    def __init__(
        self,
        keys: KeysCollection,
        image_key: str = "image",
        allow_constant: bool = True,
        affine_atol: float = 1e-3,
        allow_missing_keys: bool = False,
        label_keys: KeysCollection = (),
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_key = image_key
        self.label_keys = list(ensure_tuple(label_keys))
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
        line = spacing_warning(src, getattr(x, "affine", None))
        if line:
            logger.warning(line)
        meta = getattr(x, "meta", None) or {}
        if _code(meta.get("qform_code")) == 0 and _code(meta.get("sform_code")) == 0:
            logger.warning(
                f"{src}: NIfTI header has neither qform nor sform; position and orientation are guessed "
                "and a zero voxel spacing is read as 1 mm"
            )
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
            if key in self.label_keys:
                check_label_values(d[key], _source(d[key], str(key)))
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


class ResampleSpacingd(Spacingd):
    """MONAI ``Spacingd`` that leaves non-metadata entries named ``<key>_*`` alone.

    Since MONAI 1.6.0, ``Spacingd`` calls ``.update(meta)`` on every entry whose name starts with
    ``"<key>_"`` (meant for ``image_meta_dict``) when the volume came from a NIfTI file. MONAI Label puts
    the image's path, a string, under ``image_path``, so every request failed with ``'str' object has no
    attribute 'update'``. Entries that are not mappings are set aside during the call and put back.
    Upstream, checking ``isinstance(d[meta_key], MutableMapping)`` in ``Spacingd.__call__`` would remove
    the need for this class.
    """

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        d = dict(data)
        prefixes = tuple(f"{k}_" for k in self.keys if isinstance(k, str))
        aside = {
            k: d.pop(k)
            for k in list(d)
            if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], Mapping)
        }
        out = dict(super().__call__(d, lazy=lazy))
        out.update(aside)
        return out


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
        xs.append(ResampleSpacingd(keys, pixdim=tuple(spacing), mode=modes, allow_missing_keys=allow_missing_keys))
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


def check_label_values(label: Any, path: str) -> None:
    """Raise :class:`VolumeError` if a label map holds non-integer values (a probability map, a resampled
    label): rounding would invent class ids, truncating would shrink every structure.

    Float-typed files whose values are all whole numbers (many NIfTI labels) are accepted.
    """
    t = torch.as_tensor(label)
    if t.is_floating_point():
        bad = t[(t != torch.round(t)) | ~torch.isfinite(t)]
        if bad.numel():
            raise VolumeError(
                path,
                f"label map has {bad.numel()} non-integer values (e.g. {float(bad[0]):.4g}); class ids must be integers",
            )
