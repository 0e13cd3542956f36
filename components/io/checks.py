"""Option and file checks run before any heavy work, each failing with one ``OptionError`` /
``VolumeError`` line that names the option or file.

The bundle configs call them from their ``initialize`` section (``check_pretrain_options`` ...), so
a bad ``--lr`` or a read-only output folder is reported in a second, not after the data is loaded.

Example::

    check_positive("lr", -0.005)        # OptionError: "lr: must be a finite number > 0, got -0.005"
    check_writable_dir("output_dir", "/read-only/out")
    readable_checkpoint("/models/sam2.pt", what="SAM2 checkpoint")
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components.io.errors import OptionError, VolumeError

__all__ = [
    "CheckpointError",
    "check_positive",
    "check_int_at_least",
    "check_writable_dir",
    "check_exists",
    "check_preset",
    "check_crop_size",
    "readable_checkpoint",
    "newest_readable_checkpoint",
    "check_pretrain_options",
    "check_maskgen_options",
    "check_probe_options",
]

logger = logging.getLogger("mass.checks")


class CheckpointError(VolumeError):
    """A checkpoint file that cannot be read (missing, truncated, not a tensor-only file)."""


def check_positive(option: str, value: Any) -> float:
    """``value`` as a float; ``OptionError`` unless it is a finite number > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise OptionError(option, f"must be a finite number > 0, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise OptionError(option, f"must be a finite number > 0, got {value!r}")
    return v


def check_int_at_least(option: str, value: Any, low: int = 1) -> int:
    """``value`` as an int; ``OptionError`` unless it is a whole number >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise OptionError(option, f"must be a whole number >= {low}, got {value!r}")
    try:
        f = float(value)
    except ValueError:
        raise OptionError(option, f"must be a whole number >= {low}, got {value!r}") from None
    if not math.isfinite(f) or f != int(f) or int(f) < low:
        raise OptionError(option, f"must be a whole number >= {low}, got {value!r}")
    return int(f)


def check_writable_dir(option: str, path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and prove it writable with a temp file; ``OptionError`` otherwise."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".write_test."):
            pass
    except OSError as e:
        raise OptionError(option, f"{p}: output folder is not writable ({e.strerror or e})") from None
    return p


def check_exists(option: str, path: str | os.PathLike | None, what: str = "file") -> Path:
    """``OptionError`` naming the option and path unless ``path`` exists (a file or folder)."""
    if not path:
        raise OptionError(option, f"no {what} given")
    p = Path(path)
    if not p.exists():
        raise OptionError(option, f"{p}: {what} does not exist")
    if p.is_dir() and what != "folder" and not any(p.iterdir()):
        raise OptionError(option, f"{p}: folder is empty")
    return p


def check_preset(option: str, preset: Any) -> dict:
    """The network configuration of ``preset``; ``OptionError`` listing the known ones otherwise."""
    from components.network.nets import PRESETS

    if preset not in PRESETS:
        raise OptionError(option, f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[preset])


def check_crop_size(option: str, crop: Any, preset: str) -> tuple[int, ...]:
    """Crop size valid for ``preset``: 3 positive multiples of 16, each <= the preset's ``max_window``."""
    from components.network.nets import DIVISOR

    cfg = check_preset("preset", preset)
    try:
        size = tuple(int(c) for c in (crop if isinstance(crop, Sequence) and not isinstance(crop, str) else [crop]))
    except (TypeError, ValueError):
        raise OptionError(option, f"must be 3 whole numbers, got {crop!r}") from None
    if len(size) != 3 or any(s <= 0 or s % DIVISOR or s > cfg["max_window"] for s in size):
        raise OptionError(
            option,
            f"{list(size)} does not fit preset {preset!r}: 3 multiples of {DIVISOR}, each <= {cfg['max_window']}",
        )
    return size


def readable_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """Load ``path`` tensor-only (``weights_only=True``, memory-mapped when possible) or raise
    :class:`CheckpointError` naming the file. PyTorch's advice to retry with ``weights_only=False``
    is never repeated: pickled code is not run."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(p, f"{what} not found")
    if p.stat().st_size == 0:
        raise CheckpointError(p, f"{what} is empty (0 bytes)")
    try:
        try:
            return torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # legacy (non-zip) files cannot be memory-mapped
                raise
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text or "Unpickler" in text:
            problem = f"{what} holds pickled Python objects; only tensor checkpoints are loaded"
        else:
            first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
            problem = f"{what} cannot be read (truncated or corrupt: {first[:160]})"
        raise CheckpointError(p, problem) from None


def newest_readable_checkpoint(folder: str | os.PathLike, pattern: str = "*checkpoint*.pt") -> str | None:
    """The newest file of ``folder`` matching ``pattern`` that loads; each broken newer one is skipped
    with a warning naming it. None if there is none."""
    d = Path(folder)
    if not d.is_dir():
        return None
    for p in sorted(d.glob(pattern), key=lambda f: f.stat().st_mtime, reverse=True):
        try:
            readable_checkpoint(p)
        except CheckpointError as e:
            logger.warning(f"resume: skipping broken checkpoint {e}")
            continue
        return str(p)
    return None


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


def check_maskgen_options(output_dir: str, dataset_dir: str, sam2_checkpoint: str | None = None) -> bool:
    """The mass_maskgen bundle's options, checked before any volume is processed."""
    check_exists("dataset_dir", dataset_dir, "dataset")
    if sam2_checkpoint:
        readable_checkpoint(sam2_checkpoint, what="SAM2 checkpoint")
    check_writable_dir("output_dir", output_dir)
    return True


def check_probe_options(
    learning_rate: Any, batch_size: Any, preset: Any, output_dir: str, datalist: str, encoder_init: str | None = None
) -> bool:
    """The mass_probe bundle's training options, checked before the datalist is read."""
    check_positive("learning_rate", learning_rate)
    check_int_at_least("batch_size", batch_size, 1)
    check_preset("preset", preset)
    check_exists("datalist", datalist, "datalist")
    if encoder_init:
        readable_checkpoint(encoder_init, what="pretrained encoder checkpoint")
    check_writable_dir("output_dir", output_dir)
    return True
