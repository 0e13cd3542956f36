"""Option and file checks run before any heavy work, each failing with one ``OptionError`` /
``VolumeError`` line that names the option or file.

Each stage's ``options`` module (``components.pretrain.options`` ...) combines them for its bundle
config's ``initialize`` section, so a bad ``--lr`` or a read-only output folder is reported in a
second, not after the data is loaded.

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

from components.checks.errors import OptionError, VolumeError

__all__ = [
    "CheckpointError",
    "check_positive",
    "check_int_at_least",
    "check_writable_dir",
    "check_exists",
    "readable_checkpoint",
    "read_json",
    "newest_readable_checkpoint",
    "check_not_finished",
    "check_weights_fit",
    "check_bool",
    "check_choice",
    "check_range",
    "check_spacing",
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


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The content of the JSON file ``path``; :class:`VolumeError` naming it if missing or not valid JSON."""
    import json

    p = Path(path)
    if not p.is_file():
        raise VolumeError(p, f"{what} does not exist")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VolumeError(p, f"{what} is not valid JSON ({e})") from None


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


def check_weights_fit(option: str, path: str | os.PathLike, net: Any, key: str = "model") -> None:
    """:class:`CheckpointError` naming ``path`` unless its weights (``state[key]`` or the whole file, as
    MONAI's ``CheckpointLoader`` reads it) fit ``net``'s state dict key for key and shape."""
    state = readable_checkpoint(path, what=option.replace("_", " "))
    if isinstance(state, dict) and isinstance(state.get(key), dict):
        state = state[key]
    own = net.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(path, f"holds no weights for {type(net).__name__}")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        first = (
            f"{shapes[0]}: checkpoint {list(state[shapes[0]].shape)} vs network {list(own[shapes[0]].shape)}"
            if shapes
            else (missing or unexpected)[0]
        )
        raise CheckpointError(
            path,
            f"weights of another network than {type(net).__name__} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(shapes)} mis-shaped keys; first: {first})",
        )


def newest_readable_checkpoint(folder: str | os.PathLike, pattern: str = "*checkpoint*.pt") -> str | None:
    """The newest file of ``folder`` matching ``pattern`` that loads; each broken newer one is skipped
    with a warning naming it. None if there is none; :class:`CheckpointError` naming every file when
    all of them are broken (nothing to resume from)."""
    d = Path(folder)
    if not d.is_dir():
        return None
    broken: list[str] = []
    for p in sorted(d.glob(pattern), key=lambda f: f.stat().st_mtime, reverse=True):
        try:
            readable_checkpoint(p)
        except CheckpointError as e:
            logger.warning(f"resume: skipping broken checkpoint {e}")
            broken.append(p.name)
            continue
        return str(p)
    if broken:
        raise CheckpointError(d, f"every checkpoint is broken ({', '.join(broken)}); nothing to resume from")
    return None


def check_not_finished(option: str, folder: str | os.PathLike, names: Sequence[str], ways: str, overwrite: Any) -> None:
    """``OptionError`` naming ``folder`` and ``ways`` (how to go on) if it holds any of the finished
    outputs ``names`` and ``overwrite`` is off: a finished model is not replaced by a command typed twice."""
    check_bool("overwrite", overwrite)
    found = [n for n in names if (Path(folder) / n).is_file()]
    if found and not overwrite:
        raise OptionError(option, f"{folder} already holds a finished run ({', '.join(found)}); {ways}")


def check_bool(option: str, value: Any) -> bool:
    """``value`` unless it is not a bool (``--resume yes``): ``OptionError``."""
    if not isinstance(value, bool):
        raise OptionError(option, f"must be True or False, got {value!r}")
    return value


def check_choice(option: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is exactly one of ``choices``; ``OptionError`` listing them otherwise."""
    if isinstance(value, bool) or value not in choices:
        raise OptionError(option, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_spacing(option: str, value: Any) -> tuple[float, float, float] | None:
    """None (keep each volume's grid) or 3 voxel sizes in mm within ``PLAUSIBLE_SPACING_MM``."""
    from components.data.loading import PLAUSIBLE_SPACING_MM

    lo, hi = PLAUSIBLE_SPACING_MM
    if value is None:
        return None
    try:
        mm = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        mm = ()
    if isinstance(value, str) or len(mm) != 3 or not all(lo <= v <= hi for v in mm):
        raise OptionError(option, f"must be 3 voxel sizes in mm within {lo:g}-{hi:g}, or None, got {value!r}")
    return (mm[0], mm[1], mm[2])


def check_range(option: str, value: Any, low: float, high: float) -> float:
    """``value`` as a float; ``OptionError`` unless it is a number in ``[low, high]``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not low <= v <= high:
        raise OptionError(option, f"must be a number in [{low:g}, {high:g}], got {value!r}")
    return v
