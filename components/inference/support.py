"""An in-context task from reference (support) volumes: each class's masks cropped and encoded, averaged
over the K references, saved once as a task file and reused.

Example::

    task = encode_support(net, support, parse_classes({"thalamus": [10, 49]}), spacing=(2.0,) * 3)
    task.save("task.pt")     # TaskEmbedding: tokens [1, M, 11, C_s] per stage
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from monai.transforms import Compose
from monai.utils import convert_to_tensor

from components.checks.errors import VolumeError
from components.data.classes import FewShotClass, parse_classes
from components.data.preprocessing import preprocessing
from components.data.splits import check_labelled
from components.inference.crop import crop_reference

if TYPE_CHECKING:
    from components.network.nets import MASSNet

__all__ = ["EmptyReferenceError", "encode_support", "load_task", "load_or_encode_task"]


class EmptyReferenceError(VolumeError):
    """A support volume does not contain a requested class (message: ``<label path>: ...``)."""


@torch.no_grad()
def encode_support(
    net: MASSNet,
    support: Sequence[Mapping[str, Any]],
    classes: Sequence[FewShotClass],
    spacing: Sequence[float] | None = (2.0, 2.0, 2.0),
    roi_size: Sequence[int] = (96, 96, 96),
    modality: str = "mr",
    device: str | torch.device = "cpu",
):
    """Averaged task embedding of ``classes`` from K support volumes (all classes, one object).

    Each support volume is preprocessed, cropped around each class's mask to ``roi_size`` and
    encoded (``net.encode_task``); the K embeddings of a class are averaged token-wise and the
    classes are joined along the mask axis. Returns a ``TaskEmbedding`` with tokens
    ``[1, M, 11, C_s]`` and ``names`` = class names. A class empty in a support volume raises
    :class:`EmptyReferenceError` naming the label file and the class.
    """
    from components.network.task_embedding import TaskEmbedding

    check_labelled(support)
    load = Compose(preprocessing(("image", "label"), spacing=spacing, modality=modality, classes=classes))
    net.eval()
    per_class: list[list[Any]] = [[] for _ in classes]
    for item in support:
        d = load(dict(item))
        image, masks = d["image"], d["label"]
        for m, cls in enumerate(classes):
            if float(masks[m].sum()) == 0:
                raise EmptyReferenceError(
                    item["label"],
                    f"reference mask for class '{cls.name}' (label ids "
                    f"{list(cls.label_ids)}) is empty in this support volume",
                )
            ref_img, ref_mask = crop_reference(image, masks[m : m + 1], roi_size)
            emb = net.encode_task(
                convert_to_tensor(ref_img, track_meta=False)[None].float().to(device),
                convert_to_tensor(ref_mask, track_meta=False)[None].float().to(device),
            )
            per_class[m].append(emb.detach().to("cpu"))
    joined = [TaskEmbedding.average(embs) for embs in per_class]
    task = TaskEmbedding.concat(joined)
    task.names = [c.name for c in classes]
    task.meta = {
        "support": [str(s["image"]) for s in support],
        "spacing": [float(s) for s in spacing or []],
        "roi_size": [int(r) for r in roi_size],
        "modality": modality,
        "label_ids": {c.name: list(c.label_ids) for c in classes},
    }
    return task


def load_task(path: str | os.PathLike, classes: Sequence[FewShotClass] | None = None):
    """A saved task embedding, optionally reduced/reordered to ``classes`` (by name)."""
    from components.network.task_embedding import TaskEmbedding, TaskEmbeddingError

    task = TaskEmbedding.load(path)
    if classes is None:
        return task
    names = task.names or []
    missing = [c.name for c in classes if c.name not in names]
    if missing:
        raise TaskEmbeddingError(f"{path}: task file has no embedding for class(es) {missing} (has {names})")
    return task.select([names.index(c.name) for c in classes])


def load_or_encode_task(
    net: MASSNet,
    task_file: str | os.PathLike,
    classes: Sequence[FewShotClass] | Mapping[str, Any],
    support: Sequence[Mapping[str, Any]] | None = None,
    spacing: Sequence[float] | None = (2.0, 2.0, 2.0),
    roi_size: Sequence[int] = (96, 96, 96),
    modality: str = "mr",
    device: str | torch.device = "cpu",
):
    """The task of ``task_file`` when it exists (reused, reduced to ``classes``); else encode ``support``,
    save it there and return it. A support set is thus encoded once."""
    classes = parse_classes(classes) if isinstance(classes, Mapping) else list(classes)
    if task_file and Path(task_file).is_file():
        return load_task(task_file, classes)
    if not support:
        raise VolumeError(task_file, "task file does not exist and no support datalist was given to create it")
    task = encode_support(net, support, classes, spacing=spacing, roi_size=roi_size, modality=modality, device=device)
    if task_file:
        task.save(task_file)
    return task
