"""Networks and data for few-shot finetuning (FT) of the fixed-class MASS model.

* :func:`build_incontext_network` — ``MASSNet`` of a preset, randomly initialised (``scratch``) or
  loaded from a checkpoint: our pretraining bundle's ``models/model.pt`` or the authors' release
  container (both ``{"model", "ema_model"|"ema_state_dict", ...}``; EMA weights preferred).
* :func:`build_finetune_network` — ``FixedClassNet`` whose encoder/decoder/head come from that
  network and whose class embeddings are the averaged task embeddings of the K training
  references (as the release initialises finetuning).

The training transforms are listed in ``mass_fewshot/configs/train.json`` (``train#deterministic_transforms``:
the preprocessing of :func:`~components.data.preprocessing.preprocessing`, reused by validation;
``train#random_transforms``: patches centred on a random target class and light intensity augmentation).

Example::

    net = build_finetune_network("small", classes, support, init_checkpoint="models/model.pt")
    logits = net(torch.zeros(1, 1, 64, 64, 64))          # [1, len(classes), 64, 64, 64]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from components.data.classes import FewShotClass, parse_classes
from components.inference.support import encode_support

__all__ = ["INIT_CHOICES", "build_incontext_network", "build_finetune_network"]

logger = logging.getLogger(__name__)
INIT_CHOICES = ("scratch", "pretrained", "release")


def build_incontext_network(
    preset: str = "small",
    init: str = "scratch",
    init_checkpoint: str | os.PathLike | None = None,
    prefer_ema: bool = True,
    seed: int | None = 0,
):
    """``MASSNet`` for ``preset``; ``init`` "scratch" (seeded random) or "pretrained"/"release" (from file).

    Both checkpoint kinds use the release container, read by
    :func:`~components.network.release_checkpoint.load_release_checkpoint` (``weights_only=True``); a file
    that does not fit the preset raises ``ReleaseCheckpointError`` listing the mismatches.
    """
    from components.checks.errors import VolumeError
    from components.network.nets import build_network
    from components.network.release_checkpoint import load_release_checkpoint

    if init not in INIT_CHOICES:
        raise ValueError(f"init must be one of {INIT_CHOICES}, got {init!r}")
    if seed is not None:
        torch.manual_seed(seed)
    net = build_network(preset)
    if init != "scratch":
        if not init_checkpoint:
            raise ValueError(f"init={init!r} needs init_checkpoint (a model.pt of mass_pretrain or a release .pth)")
        if not os.path.isfile(init_checkpoint):
            raise VolumeError(init_checkpoint, f"checkpoint for init={init!r} does not exist")
        info = load_release_checkpoint(init_checkpoint, net, prefer_ema=prefer_ema)
        logger.info("loaded %s weights from %s (%s, %d tensors)", init, init_checkpoint, info["source"], info["loaded"])
    return net.eval()


def build_finetune_network(
    preset: str,
    classes: Sequence[FewShotClass] | Mapping[str, Any],
    support: Sequence[Mapping[str, Any]],
    init: str = "scratch",
    init_checkpoint: str | os.PathLike | None = None,
    spacing: Sequence[float] | None = (2.0, 2.0, 2.0),
    roi_size: Sequence[int] = (96, 96, 96),
    modality: str = "mr",
    task_file: str | os.PathLike | None = None,
    seed: int | None = 0,
):
    """``FixedClassNet`` initialised for finetuning on ``support`` (K labelled volumes).

    The class embeddings ``[N, 11, C_s]`` are the token-wise mean over the K support volumes of
    the task embedding of each class (reference cropped to ``roi_size`` around the class). With
    ``task_file`` that averaged embedding is also saved (reusable for in-context inference).
    """
    from components.network.nets import FixedClassNet

    classes = parse_classes(classes) if isinstance(classes, Mapping) else list(classes)
    net = build_incontext_network(preset, init, init_checkpoint, seed=seed)
    task = encode_support(net, support, classes, spacing=spacing, roi_size=roi_size, modality=modality)
    if task_file:
        task.save(task_file)
    model = FixedClassNet.from_incontext(net, task)
    model.class_names = [c.name for c in classes]
    return model
