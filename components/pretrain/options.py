"""The mass_pretrain bundle's options, checked before anything is loaded (its config's ``initialize``)."""

from __future__ import annotations

from typing import Any

from components.io.checks import (
    check_exists,
    check_int_at_least,
    check_positive,
    check_writable_dir,
    readable_checkpoint,
)
from components.network.nets import check_crop_size, check_preset

__all__ = ["check_pretrain_options"]


def check_pretrain_options(
    lr: Any,
    batch_size: Any,
    preset: Any,
    crop_size: Any,
    output_dir: str,
    ckpt_dir: str,
    datalist: str,
    mask_dir: str,
    iters_per_epoch: Any = 1,
    max_epochs: Any = 1,
    resume_ckpt: str | None = None,
    init_checkpoint: str | None = None,
    warm_start: str | None = None,
) -> bool:
    """The mass_pretrain bundle's options, checked before anything is loaded (config ``initialize``)."""
    check_positive("lr", lr)
    check_int_at_least("batch_size", batch_size, 1)
    check_int_at_least("iters_per_epoch", iters_per_epoch, 1)
    check_int_at_least("max_epochs", max_epochs, 1)
    check_preset("preset", preset)
    check_crop_size("crop_size", crop_size, preset)
    check_exists("datalist", datalist, "datalist")
    check_exists("mask_dir", mask_dir, "mask folder")
    for option, p in (("init_checkpoint", init_checkpoint), ("warm_start", warm_start), ("resume_path", resume_ckpt)):
        if p:
            readable_checkpoint(p, what=option.replace("_", " "))
    check_writable_dir("output_dir", output_dir)
    check_writable_dir("ckpt_dir", ckpt_dir)
    return True
