"""The mass_maskgen bundle's options, checked before any volume is processed (its config's ``initialize``)."""

from __future__ import annotations

from typing import Any

from components.checks.errors import OptionError
from components.checks.options import (
    check_choice,
    check_exists,
    check_int_at_least,
    check_writable_dir,
    readable_checkpoint,
)

__all__ = ["SOURCES", "check_maskgen_options"]

SOURCES = ("sam2", "slic", "labelmap")


def check_maskgen_options(
    output_dir: str,
    dataset_dir: str,
    sam2_checkpoint: str | None = None,
    *,
    source: Any = "slic",
    slic_n_segments: Any = (50,),
) -> bool:
    """The mass_maskgen bundle's options, checked before any volume is processed."""
    check_choice("source", source, SOURCES)
    if source == "sam2" and not sam2_checkpoint:
        raise OptionError("sam2_checkpoint", "--source sam2 needs a SAM2 checkpoint (--sam2_checkpoint FILE)")
    if source == "slic":
        scales = slic_n_segments if isinstance(slic_n_segments, (list, tuple)) else [slic_n_segments]
        if not scales:
            raise OptionError("slic_n_segments", "give at least one number of segments")
        for n in scales:
            check_int_at_least("slic_n_segments", n, 1)
    check_exists("dataset_dir", dataset_dir, "dataset")
    if sam2_checkpoint:
        readable_checkpoint(sam2_checkpoint, what="SAM2 checkpoint")
    check_writable_dir("output_dir", output_dir)
    return True
