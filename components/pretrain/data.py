"""Training data for mask-guided pretraining: volume + mask-set pairs -> two augmented views.

1. :func:`pair_masksets` adds each volume's mask-set file (``"masks"`` key) to a datalist.
2. :func:`prepare_volume` resamples the image to the target spacing, normalises intensities per
   modality (:mod:`components.data.intensity`: CT: clip [-991, 500] HU; MR/PET: clip 2nd-98th
   percentile; then z-score) and resamples
   the masks (nearest neighbour, one bounding box at a time) onto the same grid. Results are cached on
   disk (``image.npy`` memory-mapped, ``masks.mset``, ``info.json``), keyed by the inputs and
   parameters, so later epochs and later runs never re-resample.
3. :class:`MaskPretrainDataset` draws, for a global sample id, a volume, an anchor inside one of its
   masks, two overlapping context boxes (``crop + margin``, overlap >= ``overlap``) and up to
   ``max_masks`` masks present in the reference box, then the two views (:class:`TwoViewAugment`).
   All randomness comes from ``(seed, sample id)``: a sample is reproducible and resuming is exact.
4. :class:`TwoViewSampler` hands out sample ids per epoch and per rank (different data on each rank).

Sample (before collation): ``query_image``/``ref_image`` float ``[1, *crop]``, ``query_masks``/
``ref_masks`` bool ``[max_masks, *crop]`` (padded), ``valid`` bool ``[max_masks]``, plus the warp
matrices and box starts used (for checks).
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
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from components.data.intensity import ModalityNormalize, guess_modality
from components.data.loading import load_volume
from components.io.errors import InputError, VolumeError
from components.io.maskset import MaskSet, MaskSetError, SparseMask, write_maskset
from components.io.naming import volume_stem
from components.pretrain.views import TwoViewAugment

__all__ = [
    "NoUsableVolumeError",
    "CACHE_VERSION",
    "pair_masksets",
    "prepare_volume",
    "prepare_volumes",
    "MaskPretrainDataset",
    "TwoViewSampler",
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


def _box_read(arr: np.ndarray, start: np.ndarray, size: Sequence[int] | np.ndarray, fill: float) -> np.ndarray:
    """``arr[start:start+size]`` with ``fill`` outside the array (start may be negative)."""
    out = np.full(tuple(size), fill, dtype=np.float32)
    lo = np.maximum(start, 0)
    hi = np.minimum(start + np.asarray(size), arr.shape)
    if np.all(hi > lo):
        o = lo - start
        out[o[0] : o[0] + hi[0] - lo[0], o[1] : o[1] + hi[1] - lo[1], o[2] : o[2] + hi[2] - lo[2]] = arr[
            lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]
        ]
    return out


def _paste(codes: np.ndarray, start: np.ndarray, bb: Sequence[int], crop: np.ndarray, bit: float) -> int:
    """Add ``bit`` where the mask (bbox ``bb``, bool ``crop``) falls inside the box at ``start``; voxel count."""
    size = np.asarray(codes.shape)
    lo = np.maximum(np.asarray(bb[:3]), start)
    hi = np.minimum(np.asarray(bb[3:]), start + size)
    if np.any(hi <= lo):
        return 0
    part = crop[lo[0] - bb[0] : hi[0] - bb[0], lo[1] - bb[1] : hi[1] - bb[1], lo[2] - bb[2] : hi[2] - bb[2]]
    d = lo - start
    codes[d[0] : d[0] + part.shape[0], d[1] : d[1] + part.shape[1], d[2] : d[2] + part.shape[2]] += part * np.float32(
        bit
    )
    return int(part.sum())


class MaskPretrainDataset(Dataset):
    """Two-view samples for in-context pretraining, indexed by a global sample id (any int >= 0).

    Args:
        data: datalist entries ``{"image", "masks", "modality"?}`` (see :func:`pair_masksets`).
        cache_dir: preprocessing cache folder.
        spacing: target spacing in mm (``None``: keep the native grid).
        crop_size: window of each view (each dim divisible by 16, <= 128 for the network).
        context_margin: extra context per dim around the window before the spatial augmentation.
        max_masks: masks per sample (M); fewer available -> padded with ``valid=False``.
        overlap: minimum overlap fraction (per axis) of the two context boxes.
        min_mask_voxels: masks smaller than this (after resampling) are never used.
        min_view_voxels: a mask is chosen only with this many voxels in the central ``crop_size`` window of
            both context boxes (before augmentation), and is valid only with this many voxels in the augmented reference view.
        augment: :class:`TwoViewAugment` or its keyword arguments.
        seed: base seed; sample ``i`` uses the generator seeded with ``(seed, i)``.
        length: ``len()`` for use without :class:`TwoViewSampler` (default: 100 per volume).
        sampling: ``"release"`` (the default, as released): ``min(max_masks, n)`` masks drawn uniformly
            without replacement from all usable masks of the volume, anchor uniform over the volume, no
            visibility check, so empty target channels occur and count; ``"visible"``: the anchor lies in
            a random mask and only masks with ``min_view_voxels`` in both views are used (fewer empty
            channels, padded channels marked invalid).
        ones_mask_prob: probability that one randomly chosen mask channel is replaced by an
            all-foreground mask in both views before augmentation (a whole-window task; release: 1).
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, Any]],
        cache_dir: str | os.PathLike,
        spacing: Sequence[float] | None = (1.5, 1.5, 1.5),
        crop_size: Sequence[int] = (128, 128, 128),
        context_margin: int = 40,
        max_masks: int = 13,
        overlap: float = 0.67,
        min_mask_voxels: int = 8,
        min_view_voxels: int = 8,
        augment: TwoViewAugment | Mapping[str, Any] | None = None,
        seed: int = 0,
        length: int | None = None,
        sampling: str = "release",
        ones_mask_prob: float = 1.0,
    ) -> None:
        if sampling not in ("release", "visible"):
            raise ValueError(f"MaskPretrainDataset: sampling must be 'release' or 'visible', got {sampling!r}")
        if not 0.0 <= float(ones_mask_prob) <= 1.0:
            raise ValueError(f"MaskPretrainDataset: ones_mask_prob must be in [0, 1], got {ones_mask_prob}")
        self.sampling, self.ones_mask_prob = sampling, float(ones_mask_prob)
        self.volumes = prepare_volumes(data, cache_dir, spacing, min_mask_voxels) if data else []
        self.crop_size = np.asarray([int(c) for c in crop_size])
        self.context = self.crop_size + int(context_margin)
        self.max_masks, self.overlap, self.seed = int(max_masks), float(overlap), int(seed)
        self.min_view_voxels = int(min_view_voxels)
        if augment is None or isinstance(augment, Mapping):
            augment = TwoViewAugment(crop_size=tuple(self.crop_size), **dict(augment or {}))
        self.augment = augment
        # no data at all (e.g. no held-out volume): an empty dataset, so a disabled validation can still be built
        self.length = int(length) if length is not None and self.volumes else 100 * len(self.volumes)
        self._open: dict[int, tuple[np.ndarray, MaskSet]] = {}

    def __len__(self) -> int:
        return self.length

    def _volume(self, v: int) -> tuple[np.ndarray, MaskSet]:
        if v not in self._open:  # opened lazily, per worker process
            info = self.volumes[v]
            self._open[v] = (np.load(info["image_npy"], mmap_mode="r"), MaskSet.open(info["masks"]))
        return self._open[v]

    def _starts(self, rng: np.random.Generator, anchor: np.ndarray, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ctx = self.context
        lo = np.where(shape >= ctx, np.maximum(anchor - ctx + 1, 0), (shape - ctx) // 2)
        hi = np.where(shape >= ctx, np.minimum(anchor, shape - ctx), (shape - ctx) // 2)
        hi = np.maximum(hi, lo)
        s1 = np.array([rng.integers(a, b + 1) for a, b in zip(lo, hi)])
        shift = ctx - np.ceil(self.overlap * ctx).astype(int)
        lo2, hi2 = np.maximum(lo, s1 - shift), np.minimum(hi, s1 + shift)
        s2 = np.array([rng.integers(a, max(a, b) + 1) for a, b in zip(lo2, hi2)])
        return s1, s2

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, int(index)])
        v = int(rng.integers(len(self.volumes)))
        info = self.volumes[v]
        image, ms = self._volume(v)
        usable = np.asarray(info["usable"])
        shape = np.asarray(image.shape)
        if self.sampling == "release":
            codes_ref, codes_qry, n, s_ref, s_qry = self._release_codes(rng, ms, usable, shape)
        else:
            codes_ref, codes_qry, n, s_ref, s_qry = self._visible_codes(rng, ms, usable, shape)
        if self.ones_mask_prob > 0 and rng.random() < self.ones_mask_prob:
            n = max(n, 1)  # nothing drawn: the whole-window task alone
            bit = float(1 << int(rng.integers(n)))
            for codes in (codes_ref, codes_qry):  # set that channel's bit everywhere
                has = np.floor(codes / bit) % 2 == 1
                codes += np.where(has, 0.0, bit).astype(np.float32)
        pad = float(info["pad_value"])
        ctx = self.context
        img_ref = torch.from_numpy(_box_read(image, s_ref, ctx, pad))[None]
        img_qry = torch.from_numpy(_box_read(image, s_qry, ctx, pad))[None]
        self.augment.set_random_state(seed=int(rng.integers(2**31 - 1)))
        out = self.augment.from_codes(
            img_ref, torch.from_numpy(codes_ref)[None], img_qry, torch.from_numpy(codes_qry)[None], n
        )
        m = self.max_masks
        valid = torch.zeros(m, dtype=torch.bool)
        if self.sampling == "release":
            valid[:n] = True  # empty channels are targets too, as released
        else:
            valid[:n] = out["ref_masks"].flatten(1).sum(1) >= self.min_view_voxels
        sample: dict[str, Any] = {
            "volume": v,
            "index": int(index),
            "valid": valid,
            "ref_box": torch.as_tensor(s_ref),
            "query_box": torch.as_tensor(s_qry),
        }
        for k in ("ref", "query"):
            masks = torch.zeros((m, *self.crop_size), dtype=torch.bool)
            masks[:n] = out[f"{k}_masks"]
            sample[f"{k}_masks"] = masks
            sample[f"{k}_image"] = out[f"{k}_image"]
            sample[f"{k}_affine"] = out[f"{k}_affine"]
        return sample

    def _release_codes(
        self, rng: np.random.Generator, ms: MaskSet, usable: np.ndarray, shape: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
        """Anchor uniform over the volume; masks uniform over all usable ones, pasted wherever they fall."""
        anchor = np.array([rng.integers(int(d)) for d in shape])
        s_ref, s_qry = self._starts(rng, anchor, shape)
        chosen = rng.choice(usable, size=min(self.max_masks, len(usable)), replace=False)
        codes_ref = np.zeros(tuple(self.context), np.float32)
        codes_qry = np.zeros(tuple(self.context), np.float32)
        for n, c in enumerate(chosen):
            bb, crop = ms.crop(int(c))
            _paste(codes_ref, s_ref, bb, crop, float(1 << n))
            _paste(codes_qry, s_qry, bb, crop, float(1 << n))
        return codes_ref, codes_qry, len(chosen), s_ref, s_qry

    def _visible_codes(
        self, rng: np.random.Generator, ms: MaskSet, usable: np.ndarray, shape: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
        """Anchor inside a random mask; masks kept only when both views show ``min_view_voxels`` of them."""
        first = int(rng.choice(usable))
        bb0, crop0 = ms.crop(first)
        pts = np.argwhere(crop0)
        anchor = pts[rng.integers(len(pts))] + np.asarray(bb0[:3])
        s_ref, s_qry = self._starts(rng, anchor, shape)

        # candidates: usable masks whose box meets both context boxes, the anchor's mask first
        boxes = ms.bboxes[usable]
        ctx = self.context
        meets = np.ones(len(usable), bool)
        for s in (s_ref, s_qry):
            meets &= np.all(boxes[:, :3] < s + ctx, 1) & np.all(boxes[:, 3:] > s, 1)
        cand = usable[meets]
        order = [first] + [int(c) for c in rng.permutation(cand) if c != first]
        codes_ref = np.zeros(tuple(ctx), np.float32)
        codes_qry = np.zeros(tuple(ctx), np.float32)
        n = 0
        lo = (ctx - self.crop_size) // 2  # the window kept from the context when the warp is the identity
        inner = tuple(slice(a, a + c) for a, c in zip(lo, self.crop_size))
        for c in order[: 4 * self.max_masks]:
            if n == self.max_masks:
                break
            bb, crop = ms.crop(c)
            tmp_r, tmp_q = np.zeros_like(codes_ref), np.zeros_like(codes_qry)
            if (
                _paste(tmp_r, s_ref, bb, crop, float(1 << n)) < self.min_view_voxels
                or np.count_nonzero(tmp_r[inner]) < self.min_view_voxels
            ):
                continue
            _paste(tmp_q, s_qry, bb, crop, float(1 << n))
            if np.count_nonzero(tmp_q[inner]) < self.min_view_voxels:  # the query must show the structure too
                continue
            codes_ref += tmp_r
            codes_qry += tmp_q
            n += 1
        return codes_ref, codes_qry, n, s_ref, s_qry


class TwoViewSampler(DistributedSampler):
    """Sample ids for :class:`MaskPretrainDataset`: epoch ``e`` (1-based, set by MONAI's workflow) uses
    ids ``(e-1)*samples_per_epoch + k``; rank ``r`` of ``R`` takes ``k = r, r+R, ...``.

    Works without an initialised process group (one replica). :meth:`attach` skips the ids already
    consumed when a run resumes in the middle of an epoch.
    """

    def __init__(
        self,
        dataset: Dataset,
        samples_per_epoch: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        batch_size: int = 1,
    ) -> None:
        if num_replicas is None or rank is None:
            ddp = dist.is_available() and dist.is_initialized()
            num_replicas = dist.get_world_size() if ddp else 1 if num_replicas is None else num_replicas
            rank = dist.get_rank() if ddp else 0 if rank is None else rank
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=True)
        self.samples_per_epoch, self.batch_size = int(samples_per_epoch), int(batch_size)
        self.num_samples = self.samples_per_epoch // self.num_replicas
        self.total_size = self.num_samples * self.num_replicas
        self.epoch, self.skip = 1, 0

    def __iter__(self):
        base = (max(self.epoch, 1) - 1) * self.samples_per_epoch
        ids = [base + self.rank + k * self.num_replicas for k in range(self.num_samples)]
        skip, self.skip = self.skip, 0
        return iter(ids[skip:])

    def __len__(self) -> int:
        return self.num_samples

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        def _resume(e: Any) -> None:
            done = e.state.iteration - (e.state.epoch - 1) * e.state.epoch_length
            self.skip = max(done, 0) * self.batch_size

        engine.add_event_handler(Events.EPOCH_STARTED, _resume)
