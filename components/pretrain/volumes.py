"""Pretraining volumes: each image paired with its mask set, resampled and normalised once, cached on disk.

1. :func:`pair_masksets` adds each volume's mask-set file (``"masks"`` key) to a datalist.
2. :func:`prepare_volume` resamples the image to the target spacing, normalises intensities per
   modality (:mod:`components.data.intensity`: CT: clip [-991, 500] HU; MR/PET: clip 2nd-98th
   percentile; then z-score) and resamples the masks (nearest neighbour, one bounding box at a time)
   onto the same grid. Results are cached on disk (``image.npy`` memory-mapped, ``masks.mset``,
   ``info.json``), keyed by the inputs and parameters, so later epochs and later runs never re-resample.
3. :func:`prepare_volumes` does that for a datalist, skipping (with a warning naming it) a volume that
   cannot be used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.checks.errors import InputError, VolumeError
from components.data.intensity import ModalityNormalize, guess_modality
from components.data.loading import load_volume
from components.io.maskset import MaskSet, MaskSetError, SparseMask, write_maskset
from components.io.naming import volume_stem

__all__ = [
    "CACHE_VERSION",
    "pair_masksets",
    "check_maskset_source",
    "prepare_volume",
    "NoUsableVolumeError",
    "prepare_volumes",
]


logger = logging.getLogger(__name__)


CACHE_VERSION = 1


def pair_masksets(
    data: Sequence[Mapping[str, Any]], mask_dir: str | os.PathLike, pattern: str = "{stem}.mset"
) -> list[dict[str, Any]]:
    """Add ``"masks": mask_dir/pattern.format(stem=<image stem>)`` to entries that have no ``"masks"``.

    Entries whose file does not exist are kept with ``"masks": None`` (skipped later with a warning).
    A mask set that records another source image (:func:`check_maskset_source`) raises
    :class:`VolumeError` naming both files: pairing by file name alone would train a volume on another
    volume's masks.
    """
    out = []
    for item in data:
        d = dict(item)
        if not d.get("masks"):
            p = Path(mask_dir) / pattern.format(stem=volume_stem(d["image"]))
            d["masks"] = str(p) if p.exists() else None
        if d["masks"]:
            check_maskset_source(d["masks"], d["image"])
        out.append(d)
    return out


def pretrain_split(
    datalist: str | os.PathLike,
    mask_dir: str | os.PathLike,
    section: str | None = "all",
    mask_pattern: str = "{stem}.mset",
    val_names: Sequence[str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """``{"train": [...], "val": [...]}``: the volumes of ``datalist`` (a datalist JSON or a folder,
    :func:`~components.data.datalist.build_datalist`) paired with their mask sets (:func:`pair_masksets`),
    the volumes whose stem is in ``val_names`` held out for validation. ``val_names=None``: the last
    volume when there are several, none otherwise; a name matching no volume raises ``InputError``.
    """
    from components.data.datalist import build_datalist

    data = pair_masksets(build_datalist(datalist, section=section), mask_dir, mask_pattern)
    stems = [volume_stem(d["image"]) for d in data]
    if val_names is None:
        val_names = stems[-1:] if len(data) > 1 else []
    unknown = sorted(set(val_names) - set(stems))
    if unknown:
        raise InputError(f"val_names {unknown} match no volume of {datalist} (stems: {stems[:5]}...)")
    held = set(val_names)
    return {
        "train": [d for d, s in zip(data, stems) if s not in held],
        "val": [d for d, s in zip(data, stems) if s in held],
    }


def check_maskset_source(mask_path: str | os.PathLike, image: str | os.PathLike) -> None:
    """Raise :class:`VolumeError` if the mask set at ``mask_path`` was made from another image than ``image``.

    Same image: the same resolved path, or (a dataset moved or mounted elsewhere) the same file name
    and, where the mask set records it (maskgen's ``source_sig``), the same file size. A mask set
    that records no source image is accepted. Unreadable mask sets are left to the loader.
    """
    try:
        ms = MaskSet.open(mask_path)
    except MaskSetError:
        return
    recorded = ms.image_path
    if not recorded:
        return
    if os.path.realpath(recorded) == os.path.realpath(image):
        return
    same_name = Path(recorded).name == Path(image).name
    size = (ms.extra.get("source_sig") or {}).get("image_bytes")
    try:
        same_size = size is None or int(size) == os.path.getsize(image)
    except OSError:
        same_size = True
    if same_name and same_size:
        return
    raise VolumeError(mask_path, f"was made from {recorded}, not from {image}; regenerate the masks for this volume")


def _file_sig(path: str | None) -> list[Any]:
    if not path:
        return [None]
    st = os.stat(path)
    return [str(Path(path).resolve()), st.st_size, int(st.st_mtime)]


def _resample_mask(ms: MaskSet, i: int, t_new_to_old: np.ndarray, new_shape: Sequence[int]) -> SparseMask | None:
    """Nearest-neighbour resampling of mask ``i`` onto the new grid (only around its bounding box)."""
    bb, crop = ms.crop(i)
    lo, hi = np.array(bb[:3], float), np.array(bb[3:], float) - 1.0
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    new_c = corners @ np.linalg.inv(t_new_to_old).T
    n0 = np.clip(np.floor(new_c[:, :3].min(0)) - 1, 0, None).astype(int)
    n1 = np.minimum(np.ceil(new_c[:, :3].max(0)) + 2, np.asarray(new_shape)).astype(int)
    if np.any(n1 <= n0):
        return None
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(n0, n1)], indexing="ij"), -1).reshape(-1, 3)
    src = np.rint(grid @ t_new_to_old[:3, :3].T + t_new_to_old[:3, 3]).astype(np.int64) - np.asarray(bb[:3])
    inside = np.all((src >= 0) & (src < np.asarray(crop.shape)), axis=1)
    vals = np.zeros(len(grid), dtype=bool)
    vals[inside] = crop[src[inside, 0], src[inside, 1], src[inside, 2]]
    vals = vals.reshape(tuple(n1 - n0))
    if not vals.any():
        return None
    return SparseMask((int(n0[0]), int(n0[1]), int(n0[2]), int(n1[0]), int(n1[1]), int(n1[2])), vals)


def prepare_volume(
    item: Mapping[str, Any],
    cache_dir: str | os.PathLike,
    spacing: Sequence[float] | None = (1.5, 1.5, 1.5),
    min_mask_voxels: int = 8,
) -> dict[str, Any]:
    """Preprocess one ``{"image", "masks", "modality"?}`` entry into ``cache_dir`` (or reuse the cache).

    Returns the cache info dict (``image_npy``, ``masks``, ``usable`` mask indices, ``shape``,
    ``modality``, ``pad_value``). Raises :class:`VolumeError` / :class:`MaskSetError` naming the file.
    """
    image, masks = str(item["image"]), item.get("masks")
    if not masks:
        raise VolumeError(image, "no mask-set file paired with this volume")
    sig = {
        "v": CACHE_VERSION,
        "image": _file_sig(image),
        "masks": _file_sig(str(masks)),
        "modality": item.get("modality"),
        "spacing": None if spacing is None else [float(s) for s in spacing],
        "min_vox": int(min_mask_voxels),
    }
    key = hashlib.sha1(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_dir) / f"{volume_stem(image)}_{key}"
    if (folder / "info.json").is_file():
        return json.loads((folder / "info.json").read_text())

    ms = MaskSet.open(masks)
    native = load_volume(image)  # RAS, native grid: the grid of the mask set
    if tuple(native.shape[1:]) != tuple(ms.shape) or not np.allclose(np.asarray(native.affine), ms.affine, atol=1e-3):
        raise MaskSetError(f"{masks}: grid {ms.shape} does not match the RAS grid {tuple(native.shape[1:])} of {image}")
    modality = str(item.get("modality") or guess_modality(native))
    vol = load_volume(image, spacing=spacing) if spacing is not None else native
    new_affine, new_shape = np.asarray(vol.affine, dtype=np.float64), tuple(int(s) for s in vol.shape[1:])
    arr = ModalityNormalize(modality)(vol)[0].numpy().astype(np.float32)
    if not np.isfinite(arr).all():  # e.g. intensities near 3e38: the z-score overflows float32
        raise VolumeError(image, "intensities are not finite after normalisation (overflow); check the file's scaling")

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=cache_dir))
    try:
        np.save(tmp / "image.npy", arr.astype(np.float32))
        same_grid = new_shape == tuple(ms.shape) and np.allclose(new_affine, ms.affine, atol=1e-4)
        if same_grid:
            sizes, mask_file = ms.sizes, str(Path(masks).resolve())
        else:
            t = np.linalg.inv(ms.affine) @ new_affine  # new voxel -> native voxel
            sparse = [m for m in (_resample_mask(ms, i, t, new_shape) for i in range(len(ms))) if m is not None]
            sparse = [m for m in sparse if int(m.crop.sum()) >= min_mask_voxels]
            mask_file = str(folder / "masks.mset")
            if sparse:
                write_maskset(
                    tmp / "masks.mset",
                    sparse,
                    new_affine,
                    shape=new_shape,
                    image_path=image,
                    provenance=[{"source": "resampled"}] * len(sparse),
                )
            sizes = np.array([int(m.crop.sum()) for m in sparse], dtype=np.int64)
        usable = [int(i) for i in np.flatnonzero(sizes >= min_mask_voxels)]
        info = {
            "image": image,
            "source_masks": str(masks),
            "image_npy": str(folder / "image.npy"),
            "masks": mask_file,
            "usable": usable,
            "shape": list(new_shape),
            "affine": new_affine.tolist(),
            "modality": modality,
            "pad_value": float(arr.min()),
            "spacing": sig["spacing"],
        }
        (tmp / "info.json").write_text(json.dumps(info))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return json.loads((folder / "info.json").read_text())


class NoUsableVolumeError(InputError):
    """Every datalist entry was skipped; the message starts with the first one's file and problem."""


def prepare_volumes(
    data: Sequence[Mapping[str, Any]],
    cache_dir: str | os.PathLike,
    spacing: Sequence[float] | None = (1.5, 1.5, 1.5),
    min_mask_voxels: int = 8,
) -> list[dict[str, Any]]:
    """:func:`prepare_volume` for every entry; unusable entries are skipped with a warning naming them.

    :class:`NoUsableVolumeError` (bad input) if ``data`` is not empty and every entry was skipped.
    """
    out, skipped = [], []
    for item in data:
        try:
            info = prepare_volume(item, cache_dir, spacing, min_mask_voxels)
        except (VolumeError, MaskSetError, OSError, ValueError) as e:
            skipped.append(str(e))
        else:
            if info["usable"]:
                out.append(info)
                continue
            skipped.append(f"{item['image']}: no usable masks (>= {min_mask_voxels} voxels) in {item.get('masks')}")
        warnings.warn(f"skipping volume: {skipped[-1]}", stacklevel=2)
    if skipped and not out:
        raise NoUsableVolumeError(
            f"{skipped[0]} (no usable volume among {len(data)} datalist entries; each is named in the warnings above)"
        )
    return out
