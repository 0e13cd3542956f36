"""One file per volume holding many overlapping binary 3D masks and their provenance.

Masks live on the voxel grid of the image after ``Orientation(axcodes="RAS")`` (no resampling);
the stored ``affine`` is that RAS affine. Each mask is stored as its bounding-box crop, bit-packed
(``np.packbits``) and zlib-compressed on its own, so reading one mask never decodes the others.

File layout (format version 2, little-endian)::

    b"MASSMSET" | uint32 version | uint64 header_nbytes | uint32 header_crc32 | header (UTF-8 JSON) | payload

Version 1 files (no ``header_crc32``) are still read. The header CRC-32 makes an edited or damaged
header (a bounding box, an offset) an error on open instead of silently scrambled masks; each mask's
compressed bytes have their own CRC-32 in the index.

The header holds ``shape``, ``affine``, ``image_path``, ``provenance`` and one index entry per
mask: ``[offset, nbytes, x0, y0, z0, x1, y1, z1, voxels, crc32]`` (offset into the payload,
bounding box with exclusive stops, voxel count, CRC-32 of the compressed bytes).

Example::

    write_maskset("case1.mset", masks, affine, provenance=[{"source": "slic"}] * len(masks))
    ms = MaskSet.open("case1.mset")
    m = ms.get(3)            # bool (X, Y, Z)
    batch = ms.get_many([0, 5])  # bool (2, X, Y, Z)
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.checks.errors import InputError
from components.io.atomic import default_file_mode

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "READ_VERSIONS",
    "MaskSetError",
    "SparseMask",
    "write_maskset",
    "MaskSet",
    "bbox_of",
]

MAGIC = b"MASSMSET"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
_PREFIX = struct.Struct("<8sIQ")
_HEADER_CRC = struct.Struct("<I")  # version >= 2
_ZLEVEL = 6


class MaskSetError(InputError):
    """A mask-set file is missing, corrupt, truncated or of an unsupported version (message starts with the path)."""


@dataclass(frozen=True)
class SparseMask:
    """A mask given as its bounding box (exclusive stops) and the bool crop inside it.

    Args:
        bbox: ``(x0, y0, z0, x1, y1, z1)`` on the full grid.
        crop: bool array of shape ``(x1-x0, y1-y0, z1-z0)``.
    """

    bbox: tuple[int, int, int, int, int, int]
    crop: np.ndarray


def bbox_of(mask: np.ndarray) -> tuple[int, int, int, int, int, int] | None:
    """Tight bounding box ``(x0, y0, z0, x1, y1, z1)`` (exclusive stops) of a 3D bool array, None if empty."""
    out: list[int] = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        nz = np.flatnonzero(mask.any(axis=other))
        if nz.size == 0:
            return None
        out.append(int(nz[0]))
        out.append(int(nz[-1]) + 1)
    x0, x1, y0, y1, z0, z1 = out
    return (x0, y0, z0, x1, y1, z1)


def _as_sparse(m: Any, shape: tuple[int, int, int], i: int) -> SparseMask:
    if isinstance(m, SparseMask):
        sp = m
    elif isinstance(m, dict):
        sp = SparseMask(tuple(int(v) for v in m["bbox"]), np.asarray(m["crop"]))  # type: ignore[arg-type]
    else:
        arr = np.asarray(m)
        if hasattr(m, "detach"):  # torch tensor
            arr = m.detach().cpu().numpy()
        arr = np.squeeze(arr) if arr.ndim == 4 and arr.shape[0] == 1 else arr
        if arr.shape != shape:
            raise ValueError(f"mask {i}: shape {arr.shape} differs from the grid {shape}")
        arr = arr.astype(bool, copy=False)
        bb = bbox_of(arr)
        if bb is None:
            raise ValueError(f"mask {i}: empty mask")
        sp = SparseMask(bb, arr[bb[0] : bb[3], bb[1] : bb[4], bb[2] : bb[5]])
    x0, y0, z0, x1, y1, z1 = sp.bbox
    crop = np.asarray(sp.crop).astype(bool, copy=False)
    if not (0 <= x0 < x1 <= shape[0] and 0 <= y0 < y1 <= shape[1] and 0 <= z0 < z1 <= shape[2]):
        raise ValueError(f"mask {i}: bbox {sp.bbox} outside the grid {shape}")
    if crop.shape != (x1 - x0, y1 - y0, z1 - z0):
        raise ValueError(f"mask {i}: crop shape {crop.shape} does not match bbox {sp.bbox}")
    # tighten the box so stored crops are minimal
    bb = bbox_of(crop)
    if bb is None:
        raise ValueError(f"mask {i}: empty mask")
    crop = crop[bb[0] : bb[3], bb[1] : bb[4], bb[2] : bb[5]]
    return SparseMask((x0 + bb[0], y0 + bb[1], z0 + bb[2], x0 + bb[3], y0 + bb[4], z0 + bb[5]), crop)


def write_maskset(
    path: str | os.PathLike,
    masks: Iterable[np.ndarray | SparseMask | dict],
    affine: np.ndarray,
    provenance: Sequence[dict] | None = None,
    image_path: str | None = None,
    shape: Sequence[int] | None = None,
    extra: dict | None = None,
) -> None:
    """Write masks to ``path`` atomically (temp file in the same folder, then ``os.replace``).

    Args:
        path: output file.
        masks: bool arrays ``(X, Y, Z)`` on the full grid, or ``SparseMask`` / ``{"bbox", "crop"}`` boxes.
        affine: 4x4 RAS affine of the grid.
        provenance: one JSON-serialisable dict per mask (source, axis, seed_slice, score, ...), or None.
        image_path: the source image, recorded for reference.
        shape: grid shape ``(X, Y, Z)``; required when the first mask is sparse.
        extra: JSON-serialisable volume-level metadata (e.g. generation parameters, timings).
    """
    path = Path(path)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"{path}: affine must be 4x4, got {affine.shape}")
    grid: tuple[int, int, int] | None = tuple(int(s) for s in shape) if shape is not None else None  # type: ignore
    blobs: list[bytes] = []
    index: list[list[int]] = []
    offset = 0
    for i, m in enumerate(masks):
        if grid is None:
            if isinstance(m, (SparseMask, dict)):
                raise ValueError(f"{path}: `shape` is required when masks are given as sparse boxes")
            arr = np.asarray(m.detach().cpu().numpy() if hasattr(m, "detach") else m)
            grid = tuple(int(s) for s in (arr.shape[1:] if arr.ndim == 4 else arr.shape))  # type: ignore
        sp = _as_sparse(m, grid, i)  # type: ignore[arg-type]
        blob = zlib.compress(np.packbits(sp.crop, axis=None).tobytes(), _ZLEVEL)
        index.append([offset, len(blob), *sp.bbox, int(sp.crop.sum()), zlib.crc32(blob)])
        blobs.append(blob)
        offset += len(blob)
    if grid is None:
        raise ValueError(f"{path}: no masks given and no `shape`")
    prov = [dict(p) for p in provenance] if provenance is not None else [{} for _ in index]
    if len(prov) != len(index):
        raise ValueError(f"{path}: {len(prov)} provenance entries for {len(index)} masks")
    header = {
        "version": FORMAT_VERSION,
        "shape": list(grid),
        "affine": affine.tolist(),
        "image_path": None if image_path is None else str(image_path),
        "codec": "bbox-packbits-zlib",
        "index": index,
        "provenance": prov,
        "extra": extra or {},
    }
    hbytes = json.dumps(header, separators=(",", ":"), default=_json_default).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_PREFIX.pack(MAGIC, FORMAT_VERSION, len(hbytes)))
            f.write(_HEADER_CRC.pack(zlib.crc32(hbytes)))
            f.write(hbytes)
            for b in blobs:
                f.write(b)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class MaskSet:
    """Read access to a mask-set file; only the header is read on open, masks are decoded on demand.

    Attributes:
        path: the file.
        version: format version.
        shape: grid ``(X, Y, Z)`` (RAS-oriented image grid).
        affine: 4x4 RAS affine.
        image_path: source image recorded by the writer (may be None).
        provenance: list of dicts, one per mask.
        extra: volume-level metadata dict.
    """

    def __init__(self, path: str | os.PathLike, header: dict, payload_start: int):
        self.path = Path(path)
        self.version: int = int(header["version"])
        self.shape: tuple[int, int, int] = tuple(int(s) for s in header["shape"])  # type: ignore[assignment]
        self.affine: np.ndarray = np.asarray(header["affine"], dtype=np.float64)
        self.image_path: str | None = header.get("image_path")
        self.provenance: list[dict] = list(header["provenance"])
        self.extra: dict = dict(header.get("extra") or {})
        self._index = np.asarray(header["index"], dtype=np.int64).reshape(-1, 10)
        self._start = payload_start

    @classmethod
    def open(cls, path: str | os.PathLike) -> MaskSet:
        """Read and validate the header; raises ``MaskSetError`` naming the file on any problem."""
        path = Path(path)
        if not path.is_file():
            raise MaskSetError(f"{path}: mask set file not found")
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                pre = f.read(_PREFIX.size)
                if len(pre) < _PREFIX.size:
                    raise MaskSetError(f"{path}: truncated mask set file ({size} bytes)")
                magic, version, hlen = _PREFIX.unpack(pre)
                if magic != MAGIC:
                    raise MaskSetError(f"{path}: not a mask set file (bad magic {magic!r})")
                if version not in READ_VERSIONS:
                    raise MaskSetError(
                        f"{path}: unsupported mask set version {version} (this reader: {', '.join(map(str, READ_VERSIONS))})"
                    )
                crc = None
                if version >= 2:
                    cb = f.read(_HEADER_CRC.size)
                    if len(cb) < _HEADER_CRC.size:
                        raise MaskSetError(f"{path}: truncated header")
                    (crc,) = _HEADER_CRC.unpack(cb)
                if hlen > size:
                    raise MaskSetError(f"{path}: truncated header")
                hb = f.read(hlen)
            if len(hb) < hlen:
                raise MaskSetError(f"{path}: truncated header")
            if crc is not None and zlib.crc32(hb) != crc:
                raise MaskSetError(f"{path}: corrupt mask set header (checksum mismatch)")
            header = json.loads(hb.decode("utf-8"))
            ms = cls(path, header, _PREFIX.size + (_HEADER_CRC.size if crc is not None else 0) + hlen)
        except MaskSetError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MaskSetError(f"{path}: corrupt mask set header ({type(e).__name__}: {e})") from e
        if ms.version != version:
            raise MaskSetError(f"{path}: header version {ms.version} differs from the file version")
        if len(ms.provenance) != len(ms):
            raise MaskSetError(f"{path}: {len(ms.provenance)} provenance entries for {len(ms)} masks")
        end = ms._start + (int((ms._index[:, 0] + ms._index[:, 1]).max()) if len(ms) else 0)
        if size < end:
            raise MaskSetError(f"{path}: truncated payload ({size} bytes, expected {end})")
        return ms

    def __len__(self) -> int:
        return int(self._index.shape[0])

    def __repr__(self) -> str:
        return f"MaskSet({str(self.path)!r}, n={len(self)}, shape={self.shape})"

    def _check(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"{self.path}: mask index {i} out of range (n={n})")
        return i % n

    def bbox(self, i: int) -> tuple[int, int, int, int, int, int]:
        """Bounding box ``(x0, y0, z0, x1, y1, z1)`` of mask ``i`` (exclusive stops)."""
        return tuple(int(v) for v in self._index[self._check(i), 2:8])  # type: ignore[return-value]

    def voxels(self, i: int) -> int:
        """Number of voxels in mask ``i``."""
        return int(self._index[self._check(i), 8])

    @property
    def sizes(self) -> np.ndarray:
        """Voxel counts of all masks, int64 ``(N,)``."""
        return self._index[:, 8].copy()

    @property
    def bboxes(self) -> np.ndarray:
        """All bounding boxes, int64 ``(N, 6)``."""
        return self._index[:, 2:8].copy()

    def crop(self, i: int) -> tuple[tuple[int, int, int, int, int, int], np.ndarray]:
        """Mask ``i`` as ``(bbox, bool crop)`` without building the full grid."""
        i = self._check(i)
        off, nb = int(self._index[i, 0]), int(self._index[i, 1])
        with open(self.path, "rb") as f:
            f.seek(self._start + off)
            blob = f.read(nb)
        if len(blob) != nb or zlib.crc32(blob) != int(self._index[i, 9]):
            raise MaskSetError(f"{self.path}: mask {i} is corrupt (checksum mismatch)")
        bb = self.bbox(i)
        ext = (bb[3] - bb[0], bb[4] - bb[1], bb[5] - bb[2])
        bits = np.frombuffer(zlib.decompress(blob), dtype=np.uint8)
        crop = np.unpackbits(bits, count=ext[0] * ext[1] * ext[2]).reshape(ext).astype(bool)
        return bb, crop

    def get(self, i: int) -> np.ndarray:
        """Mask ``i`` on the full grid, bool ``(X, Y, Z)``."""
        bb, crop = self.crop(i)
        out = np.zeros(self.shape, dtype=bool)
        out[bb[0] : bb[3], bb[1] : bb[4], bb[2] : bb[5]] = crop
        return out

    def get_many(self, idx: Iterable[int]) -> np.ndarray:
        """Masks ``idx`` on the full grid, bool ``(N, X, Y, Z)``."""
        idx = list(idx)
        out = np.zeros((len(idx), *self.shape), dtype=bool)
        for k, i in enumerate(idx):
            bb, crop = self.crop(int(i))
            out[k, bb[0] : bb[3], bb[1] : bb[4], bb[2] : bb[5]] = crop
        return out

    def verify(self) -> None:
        """Decode every mask and check checksums and voxel counts; raises ``MaskSetError``."""
        for i in range(len(self)):
            _, crop = self.crop(i)
            if int(crop.sum()) != self.voxels(i):
                raise MaskSetError(f"{self.path}: mask {i} voxel count differs from the index")

    def stats(self) -> dict:
        """Per-volume statistics from the header (no mask decoding).

        Keys: ``n_masks``, ``voxels_min/median/mean/max``, ``mask_voxels_total``, ``file_mb``,
        ``bits_per_mask_voxel``, ``by_source`` (count per provenance ``source``), ``shape``.
        """
        sizes = self._index[:, 8]
        nbytes = self.path.stat().st_size
        total = int(sizes.sum())
        st: dict[str, Any] = {
            "n_masks": len(self),
            "shape": list(self.shape),
            "mask_voxels_total": total,
            "file_mb": nbytes / 1e6,
            "bits_per_mask_voxel": (8.0 * nbytes / total) if total else float("nan"),
            "by_source": dict(Counter(str(p.get("source", "unknown")) for p in self.provenance)),
        }
        if len(self):
            st.update(
                voxels_min=int(sizes.min()),
                voxels_median=float(np.median(sizes)),
                voxels_mean=float(sizes.mean()),
                voxels_max=int(sizes.max()),
            )
        return st
