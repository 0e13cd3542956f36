"""One file-stem rule for volumes, mask sets and maskgen outputs."""

from __future__ import annotations

import pytest

from components.io.naming import VOLUME_SUFFIXES, has_volume_suffix, volume_stem


@pytest.mark.parametrize(
    ("path", "stem"),
    [
        ("/d/case_01.nii.gz", "case_01"),
        ("/d/Case.NII.GZ", "Case"),  # suffix case-insensitive, stem keeps its case
        ("case.nii", "case"),
        ("/d/ct.nrrd", "ct"),
        ("/d/ct.nhdr", "ct"),
        ("/d/ct.mha", "ct"),
        ("/d/ct.mhd", "ct"),
        ("/m/case_01.mset", "case_01"),  # a volume and its mask set share the stem
        ("/d/sub.ject.v2.nii.gz", "sub.ject.v2"),  # only the volume suffix goes
        ("/d/dicom_series/", "dicom_series"),  # a DICOM folder, trailing slash ignored
        ("/d/notes.txt", "notes.txt"),
    ],
)
def test_volume_stem(path, stem):
    assert volume_stem(path) == stem


def test_volume_suffixes():
    assert has_volume_suffix("/d/a.NII.gz") and has_volume_suffix("b.mhd")
    assert not has_volume_suffix("a.mset") and not has_volume_suffix("a.dcm")
    assert VOLUME_SUFFIXES.index(".nii.gz") < VOLUME_SUFFIXES.index(".nii")
