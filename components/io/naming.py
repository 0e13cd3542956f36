"""File naming shared by every stage: which files are volumes, and the stem a case is known by.

A volume ``/d/case_01.nii.gz`` and its mask set ``/m/case_01.mset`` share the stem ``case_01``;
maskgen names its outputs, pretraining pairs volumes with mask sets and the datalist builder pairs
images with labels by this stem.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["VOLUME_SUFFIXES", "MASKSET_SUFFIX", "volume_stem", "has_volume_suffix"]

#: volume file suffixes read by the loaders (lower case, longest first where one ends another)
VOLUME_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: suffix of a mask-set file (:mod:`components.io.maskset`)
MASKSET_SUFFIX = ".mset"


def has_volume_suffix(path: str | os.PathLike) -> bool:
    """Whether the file name ends in one of :data:`VOLUME_SUFFIXES` (case-insensitive)."""
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def volume_stem(path: str | os.PathLike) -> str:
    """File name without its volume or mask-set suffix (``/d/case_01.nii.gz`` -> ``case_01``).

    The suffix match is case-insensitive, the stem keeps its case; a DICOM series folder (or any
    other name) is returned unchanged; a trailing ``/`` is ignored.
    """
    name = Path(path).name
    for suffix in (*VOLUME_SUFFIXES, MASKSET_SUFFIX):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
