"""Mask-set file: round trip, single-mask reads, atomic writes, clear errors, stats."""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pytest

import components.io.maskset as maskset_mod
from components.io.maskset import MaskSet, MaskSetError, SparseMask, write_maskset

SHAPE = (20, 24, 16)


def _masks(n: int = 12, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    g = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    out = []
    for _ in range(n):
        c, r = rng.integers(3, 14, 3), rng.integers(2, 6)
        out.append(((g[0] - c[0]) ** 2 + (g[1] - c[1]) ** 2 + (g[2] - c[2]) ** 2) < r * r)
    return out


def test_round_trip_dense_and_sparse(tmp_path):
    masks = _masks()
    aff = np.diag([1.5, 1.5, 2.0, 1.0])
    prov = [{"source": "test", "seed_slice": i, "score": 0.5} for i in range(len(masks))]
    p = tmp_path / "a.mset"
    write_maskset(p, masks, aff, prov, image_path="img.nii.gz")
    ms = MaskSet.open(p)
    assert ms.version == maskset_mod.FORMAT_VERSION and ms.shape == SHAPE and len(ms) == len(masks)
    assert np.allclose(ms.affine, aff) and ms.provenance == prov and ms.image_path == "img.nii.gz"
    assert np.array_equal(ms.get_many(range(len(masks))), np.stack(masks))
    for i, m in enumerate(masks):
        assert ms.voxels(i) == m.sum()
        bb = ms.bbox(i)
        assert m[bb[0] : bb[3], bb[1] : bb[4], bb[2] : bb[5]].sum() == m.sum()
    # the same masks as sparse boxes (loose boxes are tightened)
    sparse = [SparseMask((0, 0, 0, *SHAPE), m) for m in masks]
    write_maskset(tmp_path / "b.mset", sparse, aff, prov, shape=SHAPE)
    assert np.array_equal(MaskSet.open(tmp_path / "b.mset").get_many(range(len(masks))), np.stack(masks))
    st = ms.stats()
    assert st["n_masks"] == len(masks) and st["by_source"] == {"test": len(masks)}
    assert st["mask_voxels_total"] == sum(int(m.sum()) for m in masks) and st["bits_per_mask_voxel"] > 0


def test_single_mask_read_does_not_decode_others(tmp_path):
    masks = _masks()
    p = tmp_path / "a.mset"
    write_maskset(p, masks, np.eye(4))
    ms = MaskSet.open(p)
    # corrupt the payload of mask 3 only: mask 5 still reads, mask 3 fails its checksum
    off, nb = int(ms._index[3, 0]), int(ms._index[3, 1])
    raw = bytearray(p.read_bytes())
    raw[ms._start + off + nb // 2] ^= 0xFF
    p.write_bytes(bytes(raw))
    ms = MaskSet.open(p)
    assert np.array_equal(ms.get(5), masks[5])
    with pytest.raises(MaskSetError, match="a.mset: mask 3 is corrupt"):
        ms.get(3)
    with pytest.raises(MaskSetError):
        ms.verify()


def test_clear_errors_name_the_file(tmp_path):
    with pytest.raises(MaskSetError, match="missing.mset: mask set file not found"):
        MaskSet.open(tmp_path / "missing.mset")
    bad = tmp_path / "bad.mset"
    bad.write_bytes(b"not a mask set at all")
    with pytest.raises(MaskSetError, match="bad.mset: not a mask set"):
        MaskSet.open(bad)
    p = tmp_path / "v.mset"
    write_maskset(p, _masks(3), np.eye(4))
    raw = bytearray(p.read_bytes())
    raw[8:12] = struct.pack("<I", 99)
    (tmp_path / "v99.mset").write_bytes(bytes(raw))
    with pytest.raises(MaskSetError, match="v99.mset: unsupported mask set version 99"):
        MaskSet.open(tmp_path / "v99.mset")
    (tmp_path / "trunc.mset").write_bytes(p.read_bytes()[:-5])
    with pytest.raises(MaskSetError, match="trunc.mset: truncated"):
        MaskSet.open(tmp_path / "trunc.mset")
    with pytest.raises(ValueError, match="mask 1: empty"):
        write_maskset(tmp_path / "e.mset", [_masks(1)[0], np.zeros(SHAPE, bool)], np.eye(4))
    with pytest.raises(ValueError, match="provenance"):
        write_maskset(tmp_path / "e.mset", _masks(2), np.eye(4), [{}])


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "a.mset"
    write_maskset(p, _masks(4), np.eye(4))
    before = p.read_bytes()

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(maskset_mod.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        write_maskset(p, _masks(8, seed=1), np.eye(4))
    assert p.read_bytes() == before  # the old complete file is untouched
    assert sorted(os.listdir(tmp_path)) == ["a.mset"]  # no temp file left behind


def test_header_is_json_with_version(tmp_path):
    p = tmp_path / "a.mset"
    write_maskset(p, _masks(2), np.eye(4), extra={"note": "x"})
    raw = p.read_bytes()
    magic, version, hlen, crc = struct.unpack("<8sIQI", raw[:24])
    header = json.loads(raw[24 : 24 + hlen])
    assert magic == b"MASSMSET" and version == header["version"] == 2 and header["extra"] == {"note": "x"}
    assert crc == zlib.crc32(raw[24 : 24 + hlen])


def _as_version_1(p):
    """Rewrite a version-2 file as the version-1 layout (no header CRC), as older runs wrote it."""
    raw = p.read_bytes()
    _, _, hlen, _ = struct.unpack("<8sIQI", raw[:24])
    header = json.loads(raw[24 : 24 + hlen])
    header["version"] = 1
    hb = json.dumps(header, separators=(",", ":")).encode()
    p.write_bytes(struct.pack("<8sIQ", b"MASSMSET", 1, len(hb)) + hb + raw[24 + hlen :])


def test_version_1_files_are_still_read(tmp_path):
    p = tmp_path / "old.mset"
    masks = _masks(3)
    write_maskset(p, masks, np.eye(4))
    _as_version_1(p)
    ms = MaskSet.open(p)
    ms.verify()
    assert ms.version == 1 and np.array_equal(ms.get(1), masks[1])


def test_an_edited_header_digit_is_refused_on_open(tmp_path):
    p = tmp_path / "a.mset"
    write_maskset(p, _masks(2), np.eye(4))
    raw = bytearray(p.read_bytes())
    hlen = struct.unpack("<8sIQI", raw[:24])[2]
    header = raw[24 : 24 + hlen].decode()
    i = header.index('"index":[[') + len('"index":[[')
    j = header.index(",", header.index(",", i) + 1) + 1  # first bbox digit (after offset and nbytes)
    d = header[j]
    raw[24 + j] = ord("1" if d != "1" else "2")
    p.write_bytes(bytes(raw))
    with pytest.raises(MaskSetError, match="a.mset: corrupt mask set header"):
        MaskSet.open(p)
