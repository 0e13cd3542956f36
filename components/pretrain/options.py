"""The mass_pretrain bundle's options, checked before anything is loaded (its config's ``initialize``)."""

from __future__ import annotations

from typing import Any

from components.checks.errors import OptionError
from components.checks.options import (
    check_bool,
    check_choice,
    check_exists,
    check_int_at_least,
    check_not_finished,
    check_positive,
    check_spacing,
    check_writable_dir,
    readable_checkpoint,
)
from components.network.nets import check_crop_size, check_preset

__all__ = ["check_pretrain_options", "check_resume_epochs"]

SAMPLINGS = ("release", "visible")
LR_SCHEDULES = ("onecycle", "poly")
LOSSES = ("tversky", "dice")
MAGNITUDES = ("small", "medium", "large")


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
    *,
    resume: Any = False,
    overwrite: Any = False,
    max_masks: Any = 13,
    sampling: Any = "release",
    lr_schedule: Any = "onecycle",
    aug_magnitude: Any = "medium",
    loss_name: Any = "tversky",
    spacing: Any = None,
) -> bool:
    """The mass_pretrain bundle's options, checked before anything is loaded (config ``initialize``).

    Without ``resume``, a ``ckpt_dir`` holding a finished ``model.pt`` is refused unless ``overwrite``.
    """
    check_positive("lr", lr)
    check_int_at_least("batch_size", batch_size, 1)
    check_int_at_least("iters_per_epoch", iters_per_epoch, 1)
    check_int_at_least("max_epochs", max_epochs, 1)
    check_int_at_least("max_masks", max_masks, 1)
    check_preset("preset", preset)
    check_crop_size("crop_size", crop_size, preset)
    check_spacing("spacing", spacing)
    check_choice("sampling", sampling, SAMPLINGS)
    check_choice("lr_schedule", lr_schedule, LR_SCHEDULES)
    check_choice("loss_name", loss_name, LOSSES)
    if not isinstance(aug_magnitude, (int, float)) or isinstance(aug_magnitude, bool):
        check_choice("aug_magnitude", aug_magnitude, MAGNITUDES)
    elif not 0 <= aug_magnitude < 10:
        raise OptionError("aug_magnitude", f"must be one of {MAGNITUDES} or a number in [0, 10), got {aug_magnitude!r}")
    check_exists("datalist", datalist, "datalist")
    check_exists("mask_dir", mask_dir, "mask folder")
    for option, p in (("init_checkpoint", init_checkpoint), ("warm_start", warm_start), ("resume_path", resume_ckpt)):
        if p:
            readable_checkpoint(p, what=option.replace("_", " "))
    if warm_start:
        _check_same_preset("warm_start", warm_start, preset)
    check_writable_dir("output_dir", output_dir)
    check_writable_dir("ckpt_dir", ckpt_dir)
    if not check_bool("resume", resume):
        check_not_finished(
            "ckpt_dir",
            ckpt_dir,
            ["model.pt"],
            "continue it with --resume True, write to a new --ckpt_dir, or replace it with --overwrite True",
            overwrite,
        )
    return True


def _check_same_preset(option: str, path: str, preset: str) -> None:
    """``OptionError`` unless the weights at ``path`` were made with ``preset``."""
    from components.network.release_checkpoint import preset_of_checkpoint

    made = preset_of_checkpoint(path)
    if made != preset:
        raise OptionError(option, f"{path}: weights of preset {made!r}, not of --preset {preset!r}")


def check_resume_epochs(resume_ckpt: str | None, max_epochs: Any) -> bool:
    """``OptionError`` if the checkpoint a run resumes from has done more epochs than ``max_epochs``."""
    if not resume_ckpt:
        return True
    trainer = readable_checkpoint(resume_ckpt, what="resume checkpoint").get("trainer") or {}
    done = int(trainer.get("iteration", 0)) // max(1, int(trainer.get("epoch_length") or 1))
    if done > int(max_epochs):
        raise OptionError(
            "max_epochs", f"{max_epochs} is below the {done} epochs done in {resume_ckpt}; give more to train on"
        )
    return True
