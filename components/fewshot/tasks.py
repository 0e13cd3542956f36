"""Few-shot segmentation data: target classes, split files, support sampling and task building.

A few-shot *task* is a list of target classes, each a name plus the label ids it unites
(``{"lateral_ventricles": [4, 43]}``). Labelled volumes come from a *split file* fixed once per
dataset (``{"train": [...], "val": [...], "test": [...]}``, each a datalist), so every run of a
sweep sees the same test set. For ``shots`` K and a ``seed``, :func:`sample_support` draws K
training volumes; in-context (IC) mode encodes each of them cropped around each class and
averages the K task embeddings per class (:func:`encode_support`), finetuning (FT) trains on
the same K volumes.

Every volume goes through :func:`preprocessing`: load, check, reorient to RAS, resample to one
common spacing (so support and query of different spacing/orientation meet on one grid),
clip to the 2nd-98th percentile (MR) or a HU window (CT), z-score.

Example::

    classes = parse_classes({"thalamus": [10, 49], "brain_stem": [16]})
    split = load_split("split.json")
    support = sample_support(split["train"], shots=1, seed=0)
    task = encode_support(net, support, classes, spacing=(2.0, 2.0, 2.0), roi_size=(96, 96, 96))
    task.save("task.pt")     # TaskEmbedding: tokens [1, 2, 11, C_s] per stage
"""

from __future__ import annotations

import os
import random
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform, Transform
from monai.utils import convert_to_tensor

from components.data.datalist import build_datalist
from components.data.intensity import CT_WINDOW, ModalityNormalized
from components.data.loading import load_transforms
from components.inference.crop import crop_reference
from components.io.atomic import atomic_json
from components.io.checks import read_json
from components.io.errors import OptionError, VolumeError

if TYPE_CHECKING:
    from components.network.nets import MASSNet

__all__ = [
    "FewShotClass",
    "EmptyReferenceError",
    "parse_classes",
    "LabelToMasksd",
    "preprocessing",
    "make_split",
    "load_split",
    "check_labelled",
    "sample_support",
    "encode_support",
    "load_task",
    "load_or_encode_task",
]


CLASSES_FORMAT = 'expected {"name": id or [ids]} or [{"name": ..., "label_ids": [...]}]'


@dataclass(frozen=True)
class FewShotClass:
    """One target class: a name and the label ids merged into it."""

    name: str
    label_ids: tuple[int, ...]


class EmptyReferenceError(VolumeError):
    """A support volume does not contain a requested class (message: ``<label path>: ...``)."""


def parse_classes(spec: Mapping[str, Any] | Sequence[Any] | str | os.PathLike) -> list[FewShotClass]:
    """Classes from ``{"name": id | [ids]}``, ``[{"name":..., "label_ids": [...]}]`` or a JSON file of either."""
    where = "classes"
    if isinstance(spec, (str, os.PathLike)):
        where = str(spec)
        spec = read_json(spec, "class definition file")
    try:
        if isinstance(spec, Mapping):
            items = [(str(k), v) for k, v in spec.items()]
        else:
            items = [(str(d["name"]), d["label_ids"]) for d in cast(Sequence[Mapping[str, Any]], spec)]
        out = []
        for name, ids in items:
            ids = [ids] if isinstance(ids, (int, str)) else list(ids)
            if not ids:
                raise ValueError(f"class {name!r} has no label ids")
            out.append(FewShotClass(name, tuple(int(i) for i in ids)))
    except (KeyError, TypeError, ValueError) as e:
        raise OptionError(where, f"not a class definition ({type(e).__name__}: {e}); {CLASSES_FORMAT}") from None
    if not out:
        raise OptionError(where, f"no target classes given; {CLASSES_FORMAT}")
    if len({c.name for c in out}) != len(out):
        raise OptionError(where, f"duplicate class names in {[c.name for c in out]}")
    return out


class LabelToMasksd(MapTransform):
    """Label map ``[1, X, Y, Z]`` of integer ids -> float masks ``[M, X, Y, Z]``, one per class.

    Channel ``m`` is 1 where the label is any of ``classes[m].label_ids`` (multi-label, no background
    channel). The result keeps the label's metadata (affine, applied transforms).
    """

    def __init__(self, keys: KeysCollection, classes: Sequence[FewShotClass], allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.classes = list(classes)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            lab = d[key]
            masks = [torch.isin(lab[0], torch.tensor(c.label_ids, device=lab.device)) for c in self.classes]
            d[key] = _with_meta(torch.stack(masks).float(), lab)
        return d


def _with_meta(x: torch.Tensor, like: Any) -> Any:
    from monai.data import MetaTensor

    if isinstance(like, MetaTensor):
        return MetaTensor(x, meta=dict(like.meta), applied_operations=list(like.applied_operations))
    return x


def preprocessing(
    keys: Sequence[str] = ("image", "label"),
    spacing: Sequence[float] | None = (2.0, 2.0, 2.0),
    modality: str = "mr",
    ct_window: tuple[float, float] = CT_WINDOW,
    classes: Sequence[FewShotClass] | None = None,
    label_key: str = "label",
) -> list[Transform]:
    """Load + check + RAS + common spacing + intensity normalisation (+ label -> class masks).

    ``modality="mr"``/``"pet"``: clip to the 2nd-98th percentile, then z-score; ``"ct"``: clip to
    ``ct_window`` (HU), then z-score (:mod:`components.data.intensity`; the task's modality, an item's
    ``"modality"`` entry is ignored). Every step but the masks is invertible (MONAI ``Invertd``).
    """
    normalize = ModalityNormalized("image", modality=modality, modality_key=None, ct_window=ct_window)
    xs = load_transforms(keys, spacing=spacing)
    xs.append(normalize)
    if classes is not None and label_key in keys:
        xs.append(LabelToMasksd(label_key, classes))
    return xs


# -- splits ------------------------------------------------------------------------------------


def make_split(
    source: str | os.PathLike | Sequence[Mapping[str, Any]],
    out_path: str | os.PathLike,
    n_test: int,
    n_val: int = 0,
    seed: int = 0,
    group_key: str = "patient",
) -> dict[str, list[dict[str, Any]]]:
    """Fix a patient-level train/val/test split and write it as JSON (temp file, then rename).

    Entries sharing ``group_key`` (default: one patient per image) always land in the same part.
    """
    data = build_datalist(source) if isinstance(source, (str, os.PathLike)) else [dict(d) for d in source]
    check_labelled(data)
    groups: dict[str, list[dict[str, Any]]] = {}
    for d in data:
        groups.setdefault(str(d.get(group_key, d["image"])), []).append(d)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    if n_test + n_val >= len(keys):
        raise ValueError(f"{len(keys)} patients cannot give {n_test} test + {n_val} val and >= 1 train")
    parts = {"test": keys[:n_test], "val": keys[n_test : n_test + n_val], "train": keys[n_test + n_val :]}
    split = {k: [d for g in v for d in groups[g]] for k, v in parts.items()}
    atomic_json(out_path, split, indent=2)
    return split


def load_split(path: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Read a split file; relative paths resolve against its folder; every label must exist.

    An empty or missing ``val`` part falls back to ``train`` (noted under ``"val_is_train"``).
    """
    path = Path(path)
    if not path.is_file():
        raise VolumeError(path, "split file does not exist")
    content = read_json(path, "split file")
    if not isinstance(content, dict):
        raise VolumeError(path, "split file must hold an object with 'train', 'val' and 'test' lists")
    split: dict[str, Any] = {}
    for part in ("train", "val", "test"):
        if part in content and content[part]:
            split[part] = build_datalist(path, section=part, check_files=False)
            check_labelled(split[part])
        else:
            split[part] = []
    if not split["train"] or not split["test"]:
        raise VolumeError(path, "split needs non-empty 'train' and 'test' parts")
    test = {os.path.realpath(d["image"]) for d in split["test"]}
    for part in ("train", "val"):
        both = sorted({d["image"] for d in split[part] if os.path.realpath(d["image"]) in test})
        if both:
            raise VolumeError(
                path, f"{both[0]} is in both '{part}' and 'test' ({len(both)} such); a test case must be unseen"
            )
    split["val_is_train"] = not split["val"]
    if not split["val"]:
        split["val"] = list(split["train"])
    return split


def check_labelled(data: Sequence[Mapping[str, Any]]) -> None:
    """Raise :class:`VolumeError` naming the file when an image or its label is missing."""
    for i, d in enumerate(data):
        if "label" not in d or not d["label"]:
            raise VolumeError(d.get("image", f"entry {i}"), "has no 'label' entry; few-shot volumes need labels")
        for key in ("image", "label"):
            if not os.path.exists(d[key]):
                what = "label file" if key == "label" else "image file"
                raise VolumeError(d[key], f"{what} does not exist (for image {d['image']})")


def sample_support(train: Sequence[Mapping[str, Any]], shots: int, seed: int) -> list[dict[str, Any]]:
    """K = ``shots`` training volumes drawn without replacement, reproducible for a given ``seed``."""
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    if shots > len(train):
        raise ValueError(f"{shots} shots requested but the training split has only {len(train)} volumes")
    idx = sorted(random.Random(1000 * seed + shots).sample(range(len(train)), shots))
    return [dict(train[i]) for i in idx]


# -- in-context task building ------------------------------------------------------------------


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
