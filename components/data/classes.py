"""Target classes of a segmentation task and their masks: a name plus the label ids it unites.

``parse_classes({"lateral_ventricles": [4, 43], "brain_stem": 16})`` -> ``[FewShotClass(...), ...]``;
:class:`LabelToMasksd` turns a label map into one mask per class (no background channel).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from components.checks.errors import OptionError
from components.checks.options import read_json

__all__ = ["CLASSES_FORMAT", "FewShotClass", "parse_classes", "LabelToMasksd"]

CLASSES_FORMAT = 'expected {"name": id or [ids]} or [{"name": ..., "label_ids": [...]}]'


@dataclass(frozen=True)
class FewShotClass:
    """One target class: a name and the label ids merged into it."""

    name: str
    label_ids: tuple[int, ...]


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
