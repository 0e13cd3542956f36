"""The one preprocessing of in-context and few-shot volumes: load, check, RAS, common spacing, intensity
normalisation, and the label map as one mask per class.

Support and query of different spacing or orientation meet on one grid; MR/PET are clipped to the
2nd-98th percentile, CT to a HU window, then z-scored (:mod:`components.data.intensity`).
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import Transform

from components.data.classes import FewShotClass, LabelToMasksd
from components.data.intensity import CT_WINDOW, ModalityNormalized
from components.data.loading import load_transforms

__all__ = ["preprocessing"]


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
