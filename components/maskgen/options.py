"""The mass_maskgen bundle's options, checked before any volume is processed (its config's ``initialize``)."""

from __future__ import annotations

from components.io.checks import check_exists, check_writable_dir, readable_checkpoint

__all__ = ["check_maskgen_options"]


def check_maskgen_options(output_dir: str, dataset_dir: str, sam2_checkpoint: str | None = None) -> bool:
    """The mass_maskgen bundle's options, checked before any volume is processed."""
    check_exists("dataset_dir", dataset_dir, "dataset")
    if sam2_checkpoint:
        readable_checkpoint(sam2_checkpoint, what="SAM2 checkpoint")
    check_writable_dir("output_dir", output_dir)
    return True
