"""The mass_probe bundle's training options, checked before the datalist is read (its config's ``initialize``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from components.checks.errors import OptionError
from components.checks.options import (
    check_choice,
    check_exists,
    check_int_at_least,
    check_not_finished,
    check_positive,
    check_writable_dir,
    readable_checkpoint,
)
from components.network.nets import check_preset
from components.probe.head import TASKS

__all__ = ["MODES", "check_probe_options", "check_classes"]

MODES = ("frozen", "finetune", "scratch")


def check_probe_options(
    learning_rate: Any,
    batch_size: Any,
    preset: Any,
    output_dir: str,
    datalist: str,
    encoder_init: str | None = None,
    *,
    mode: Any = "frozen",
    task: Any = "multiclass",
    fraction: Any = 1.0,
    ckpt_dir: str | None = None,
    overwrite: Any = False,
) -> bool:
    """The mass_probe bundle's training options, checked before the datalist is read.

    A run into an ``output_dir`` / ``ckpt_dir`` holding a finished probe is refused unless ``overwrite``.
    """
    check_positive("learning_rate", learning_rate)
    check_int_at_least("batch_size", batch_size, 1)
    check_preset("preset", preset)
    check_choice("mode", mode, MODES)
    check_choice("task", task, TASKS)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise OptionError("fraction", f"must be a number in (0, 1], got {fraction!r}")
    check_exists("datalist", datalist, "datalist")
    if encoder_init:
        readable_checkpoint(encoder_init, what="pretrained encoder checkpoint")
    check_writable_dir("output_dir", output_dir)
    ways = "write to a new --output_dir and --ckpt_dir, or replace it with --overwrite True"
    check_not_finished("output_dir", output_dir, ["summary.json", "head.pt"], ways, overwrite)
    if ckpt_dir:
        check_not_finished("ckpt_dir", ckpt_dir, ["model.pt"], ways, overwrite)
    return True


def check_classes(classes: Any, task: str) -> list[str]:
    """The class names: distinct, 2 for ``binary``, at least 2 for ``multiclass``, 1 for ``multilabel``."""
    least = {"binary": 2, "multiclass": 2}.get(task, 1)
    names = [str(c) for c in classes] if isinstance(classes, Sequence) and not isinstance(classes, str) else []
    if len(names) < least or len(set(names)) != len(names) or (task == "binary" and len(names) != 2):
        need = "exactly 2 (negative, positive)" if task == "binary" else f"at least {least} distinct"
        raise OptionError("classes", f"a {task} task needs {need} class names, got {classes!r}")
    return names
