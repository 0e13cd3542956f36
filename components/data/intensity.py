"""The network's intensity normalisation (the pretraining recipe), one array/dict transform pair.

* CT: clip to the HU window :data:`CT_WINDOW` = [-991, 500], then z-score over the volume.
* MR / PET: clip to the volume's 2nd-98th percentile (:data:`MR_PERCENTILES`), then z-score.
* ``"auto"``: CT when the volume holds Hounsfield-like air values (min <= :data:`CT_AIR_HU`), else MR.

Built from MONAI's ``ScaleIntensityRange`` (identity scale with ``clip=True``: the HU clip),
``ClipIntensityPercentiles`` and ``NormalizeIntensity``. Output: float32, same shape (``[C, X, Y, Z]``);
a ``MetaTensor`` keeps its metadata. Not invertible (MONAI's ``Invertd`` skips it).

Example::

    x = ModalityNormalize("auto")(image)                       # image [1, X, Y, Z] in HU or MR units
    d = ModalityNormalized("image", modality="MR")(d)          # d["modality"], when present, wins
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import ClipIntensityPercentiles, MapTransform, NormalizeIntensity, ScaleIntensityRange, Transform

__all__ = [
    "CT_WINDOW",
    "MR_PERCENTILES",
    "CT_AIR_HU",
    "MODALITIES",
    "guess_modality",
    "resolve_modality",
    "modality_mismatch",
    "ModalityNormalize",
    "ModalityNormalized",
]

logger = logging.getLogger("mass.data")

#: HU window of the CT clip (the release's pretraining recipe)
CT_WINDOW: tuple[float, float] = (-991.0, 500.0)
#: percentile range of the MR/PET clip
MR_PERCENTILES: tuple[float, float] = (2.0, 98.0)
#: a volume whose minimum is at or below this value is taken for CT (air is about -1000 HU)
CT_AIR_HU = -500.0
#: accepted modality names (case-insensitive); MRI and PET are normalised as MR
MODALITIES = ("CT", "MR", "MRI", "PET")


def guess_modality(image: Any) -> str:
    """``"CT"`` when the volume holds Hounsfield-like air values (min <= -500), else ``"MR"``."""
    return "CT" if float(torch.as_tensor(image).min()) <= CT_AIR_HU else "MR"


def modality_mismatch(modality: str, image: Any) -> str | None:
    """A one-line warning when ``image``'s intensities do not fit ``modality`` (by its air values: CT
    holds values <= :data:`CT_AIR_HU`, MR and PET do not), else ``None``."""
    looks = guess_modality(image)
    name = "CT" if modality.upper() == "CT" else "MR"
    if looks == name:
        return None
    source = getattr(image, "meta", {}).get("filename_or_obj", "image") if hasattr(image, "meta") else "image"
    low = float(torch.as_tensor(image).min())
    if name == "MR":
        why = f"minimum {low:.0f} <= {CT_AIR_HU:.0f}: Hounsfield air, a CT"
    else:
        why = f"no value <= {CT_AIR_HU:.0f} (minimum {low:.0f}): no Hounsfield air, not a CT"
    return (
        f"{source}: intensities do not fit modality {modality.upper()} ({why}); normalised as "
        f"{modality.upper()} anyway: check the input or the modality setting"
    )


def resolve_modality(modality: str | None, image: Any = None) -> str:
    """``"CT"``, ``"MR"``, ``"MRI"`` or ``"PET"`` (upper case); ``None``/``"auto"``: guessed from ``image``.

    Raises ``ValueError`` for any other name (a typo must not silently select the MR recipe).
    """
    if modality is None or str(modality).lower() == "auto":
        if image is None:
            raise ValueError("modality 'auto' needs the image to guess from")
        return guess_modality(image)
    name = str(modality).upper()
    if name not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r} (expected CT, MR, PET or auto)")
    return name


class ModalityNormalize(Transform):
    """Array transform: CT HU clip or MR/PET percentile clip, then z-score; float32 ``[C, X, Y, Z]``.

    Args:
        modality: ``"CT"``, ``"MR"``/``"MRI"``, ``"PET"`` or ``"auto"`` (guessed per image).
        ct_window: HU clip range for CT.
        percentiles: lower/upper percentile of the MR/PET clip.
    """

    def __init__(
        self,
        modality: str | None = "auto",
        ct_window: Sequence[float] = CT_WINDOW,
        percentiles: Sequence[float] = MR_PERCENTILES,
    ) -> None:
        self.modality = "auto" if modality is None else str(modality)
        if self.modality.lower() != "auto":
            resolve_modality(self.modality)  # fail at construction on a typo
        lo, hi = (float(v) for v in ct_window)
        self.ct_clip = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=lo, b_max=hi, clip=True)
        self.mr_clip = ClipIntensityPercentiles(lower=float(percentiles[0]), upper=float(percentiles[1]))
        self.zscore = NormalizeIntensity()

    def __call__(self, img: Any, modality: str | None = None) -> torch.Tensor:
        """``img [C, X, Y, Z]`` -> normalised float32 tensor; ``modality`` overrides the constructor's.

        A declared modality the intensities do not fit (a CT with Hounsfield air given to an MR model, an
        "CT" without any air value) is normalised as declared, with a warning naming the file (logger
        ``mass.data``): the network would otherwise answer with confident nonsense and no word.
        """
        declared = modality or self.modality
        name = resolve_modality(declared, img)
        if str(declared).lower() != "auto":
            mismatch = modality_mismatch(name, img)
            if mismatch:
                logger.warning(mismatch)
        clipped = self.ct_clip(img) if name == "CT" else self.mr_clip(img)
        return torch.as_tensor(self.zscore(clipped), dtype=torch.float32)


class ModalityNormalized(MapTransform):
    """Dictionary wrapper of :class:`ModalityNormalize` for ``keys``.

    The modality of an item is ``data[modality_key]`` when that is present and non-empty, else
    ``modality`` (``"auto"``: guessed per image). ``modality_key=None`` ignores the item's entry (a
    task-level modality, e.g. few-shot).
    """

    def __init__(
        self,
        keys: KeysCollection,
        modality: str | None = "auto",
        modality_key: str | None = "modality",
        ct_window: Sequence[float] = CT_WINDOW,
        percentiles: Sequence[float] = MR_PERCENTILES,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modality_key = modality_key
        self.normalize = ModalityNormalize(modality, ct_window, percentiles)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        item_modality = d.get(self.modality_key) if self.modality_key is not None else None
        for key in self.key_iterator(d):
            d[key] = self.normalize(d[key], str(item_modality) if item_modality else None)
        return d
