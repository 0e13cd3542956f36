"""The two data losses of issue 14: same-stem volumes sharing one mask set, and pairing a volume with
another volume's mask set."""

from __future__ import annotations

import numpy as np
import pytest

from components.checks.errors import VolumeError
from components.io.maskset import write_maskset
from components.maskgen.workflow import shard_datalist
from components.pretrain.volumes import pair_masksets


def _mset(path, image, image_bytes=None):
    m = np.zeros((4, 4, 4), bool)
    m[1:3, 1:3, 1:3] = True
    extra = {"source_sig": {"image": str(image), "image_bytes": image_bytes}} if image_bytes else None
    write_maskset(path, [m], np.eye(4), image_path=str(image), extra=extra)


def test_same_stem_in_two_folders_is_refused_naming_both(tmp_path):
    data = [{"image": str(tmp_path / "patientA" / "t1.nii.gz")}, {"image": str(tmp_path / "patientB" / "t1.nii.gz")}]
    with pytest.raises(VolumeError) as err:
        shard_datalist(data, "0/2")
    msg = str(err.value)
    assert "patientA/t1.nii.gz" in msg and "patientB/t1.nii.gz" in msg and "t1.mset" in msg


def test_the_same_file_listed_twice_is_not_a_collision(tmp_path):
    data = [{"image": str(tmp_path / "a" / "t1.nii.gz")}, {"image": str(tmp_path / "a" / ".." / "a" / "t1.nii.gz")}]
    assert len(shard_datalist(data)) == 2


def test_pairing_refuses_a_mask_set_of_another_image(tmp_path):
    scan_c, scan_d = tmp_path / "c" / "t1.nii.gz", tmp_path / "d" / "scan.nii.gz"
    for p in (scan_c, scan_d):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x" * 10)
    _mset(tmp_path / "masks" / "t1.mset", scan_d)
    with pytest.raises(VolumeError) as err:
        pair_masksets([{"image": str(scan_c)}], tmp_path / "masks")
    assert str(tmp_path / "masks" / "t1.mset") in str(err.value) and str(scan_d) in str(err.value)


def test_pairing_same_name_different_size_is_refused_moved_dataset_is_accepted(tmp_path):
    old, new = tmp_path / "old" / "t1.nii.gz", tmp_path / "new" / "t1.nii.gz"
    new.parent.mkdir()
    new.write_bytes(b"x" * 10)
    _mset(tmp_path / "m1" / "t1.mset", old, image_bytes=10)  # the dataset moved: same name and size
    assert pair_masksets([{"image": str(new)}], tmp_path / "m1")[0]["masks"] == str(tmp_path / "m1" / "t1.mset")
    _mset(tmp_path / "m2" / "t1.mset", old, image_bytes=99)  # another patient's t1.nii.gz
    with pytest.raises(VolumeError, match="regenerate"):
        pair_masksets([{"image": str(new)}], tmp_path / "m2")
