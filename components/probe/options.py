"""The mass_probe bundle's training options, checked before the datalist is read (its config's ``initialize``)."""

from __future__ import annotations

from typing import Any

from components.io.checks import (
    check_exists,
    check_int_at_least,
    check_positive,
    check_writable_dir,
    readable_checkpoint,
)
from components.network.nets import check_preset

__all__ = ["check_probe_options"]


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
