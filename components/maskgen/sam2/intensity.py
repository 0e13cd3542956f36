"""Map a single-channel CT/MR/PET volume to the 3-channel 0..255 input SAM2 expects (paper §6.1).

Modes:
- ``"windows"``: one CT window (centre/width in HU) per channel; profiles ``abdomen``, ``chest``,
  ``head_neck`` or user-defined ``windows=[(c, w), ...]``.
- ``"percentiles"``: one percentile range per channel, computed inside the body (foreground) (MR/PET).
- ``"linear"``: one fixed range (e.g. [-400, 1500] HU) replicated to 3 channels (paper Table 5 ablation).
- ``"single_window"``: the first window of the profile replicated to 3 channels (ablation).

Each channel is a ``monai.transforms.ScaleIntensityRange(lo, hi, 0, 255, clip=True)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, ScaleIntensityRange, Transform
from monai.utils import convert_to_tensor

__all__ = ["CT_WINDOWS", "MR_PERCENTILES", "window_range", "foreground_mask", "SAM2Intensity", "SAM2Intensityd"]

#: CT window profiles, (centre, width) in HU per channel. abdomen/chest as the release (GUIDE §2);
#: head_neck: soft tissue 40/400, brain 40/80, bone 500/2000 (standard clinical windows).
CT_WINDOWS: dict[str, list[tuple[float, float]]] = {
    "abdomen": [(60.0, 350.0), (15.0, 250.0), (150.0, 1200.0)],
    "chest": [(-600.0, 1500.0), (50.0, 350.0), (500.0, 2000.0)],
    "head_neck": [(40.0, 400.0), (40.0, 80.0), (500.0, 2000.0)],
}
#: MR/PET percentile ranges per channel (computed inside the foreground).
MR_PERCENTILES: list[tuple[float, float]] = [(5.0, 95.0), (15.0, 85.0), (1.0, 99.0)]


def window_range(centre: float, width: float) -> tuple[float, float]:
    """HU interval ``(centre - width/2, centre + width/2)`` of a CT window."""
    return centre - width / 2.0, centre + width / 2.0


def foreground_mask(img: np.ndarray, method: str | float = "otsu") -> np.ndarray:
    """Body (foreground) mask of a volume, bool, same shape as ``img``.

    Args:
        img: intensity array (any shape).
        method: ``"otsu"`` (skimage Otsu threshold on the intensities), ``"nonzero"`` (``img > min``),
            or a float threshold.
    """
    if isinstance(method, (int, float)):
        return img > float(method)
    if method == "nonzero":
        return img > img.min()
    if method == "otsu":
        from skimage.filters import threshold_otsu

        sample = img.ravel()[:: max(1, img.size // 2_000_000)]
        thr = threshold_otsu(sample.astype(np.float32))
        fg = img > thr
        return fg if fg.any() else img > img.min()
    raise ValueError(f"unknown foreground method {method!r}")


class SAM2Intensity(Transform):
    """Channel-first ``(1, *spatial)`` volume -> ``(3, *spatial)`` float32 in [0, 255].

    Args:
        modality: ``"CT"`` (windows) or ``"MR"`` / ``"PET"`` (percentiles); picks the default mode.
        mode: ``"windows"``, ``"percentiles"``, ``"linear"`` or ``"single_window"``; None: by modality.
        profile: CT window profile name (``abdomen``, ``chest``, ``head_neck``).
        windows: user-defined ``[(centre, width), ...]`` (overrides ``profile``).
        percentiles: ``[(lo, hi), ...]`` percentile ranges for MR/PET.
        linear_range: ``(lo, hi)`` for ``mode="linear"``; None: ``[-400, 1500]`` for CT, 0.5-99.5th percentile otherwise.
        foreground: foreground method for percentile statistics (see ``foreground_mask``).

    Example::

        rgb = SAM2Intensity(modality="CT", profile="chest")(ct)  # (3, X, Y, Z)
    """

    def __init__(
        self,
        modality: str = "CT",
        mode: str | None = None,
        profile: str = "abdomen",
        windows: Sequence[Sequence[float]] | None = None,
        percentiles: Sequence[Sequence[float]] | None = None,
        linear_range: Sequence[float] | None = None,
        foreground: str | float = "otsu",
    ) -> None:
        self.modality = modality.upper()
        if self.modality not in ("CT", "MR", "MRI", "PET"):
            raise ValueError(f"modality must be CT, MR or PET, got {modality!r}")
        self.mode = mode or ("windows" if self.modality == "CT" else "percentiles")
        if self.mode not in ("windows", "percentiles", "linear", "single_window"):
            raise ValueError(f"unknown intensity mode {self.mode!r}")
        if windows is None and profile not in CT_WINDOWS:
            raise ValueError(f"unknown CT window profile {profile!r}; choose from {sorted(CT_WINDOWS)} or give windows")
        self.windows = [tuple(map(float, w)) for w in (windows or CT_WINDOWS[profile])]
        self.percentiles = [tuple(map(float, p)) for p in (percentiles or MR_PERCENTILES)]
        self.linear_range = linear_range
        self.foreground = foreground

    def ranges(self, img: np.ndarray) -> list[tuple[float, float]]:
        """Intensity interval mapped to [0, 255] for each of the 3 channels."""
        if self.mode == "windows":
            return [window_range(c, w) for c, w in self.windows]
        if self.mode == "single_window":
            return [window_range(*self.windows[0])] * 3
        if self.mode == "linear" and self.linear_range is not None:
            return [(float(self.linear_range[0]), float(self.linear_range[1]))] * 3
        if self.mode == "linear" and self.modality == "CT":
            return [(-400.0, 1500.0)] * 3
        fg = img[foreground_mask(img, self.foreground)]
        fg = fg if fg.size else img.ravel()
        pairs = [(0.5, 99.5)] if self.mode == "linear" else self.percentiles
        out = []
        for lo, hi in pairs:
            a, b = np.percentile(fg, [lo, hi])
            out.append((float(a), float(b) if b > a else float(a) + 1.0))
        return out * 3 if self.mode == "linear" else out

    def __call__(self, img: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = convert_to_tensor(img, track_meta=False).float()
        if x.ndim != 4 or x.shape[0] != 1:
            raise ValueError(f"expected a channel-first single-channel 3D volume (1, X, Y, Z), got {tuple(x.shape)}")
        rngs = self.ranges(x[0].numpy())
        chans = [ScaleIntensityRange(lo, hi, 0.0, 255.0, clip=True)(x[0]) for lo, hi in rngs]
        out = torch.stack([convert_to_tensor(c, track_meta=False) for c in chans]).float()
        if hasattr(img, "copy_meta_from"):
            from monai.data import MetaTensor

            out = MetaTensor(out, meta=dict(img.meta))  # type: ignore[union-attr]
        return out


class SAM2Intensityd(MapTransform):
    """Dictionary version of ``SAM2Intensity``: reads ``keys`` and writes ``(3, *spatial)`` to ``output_key``.

    The original single-channel image stays in ``keys`` (mask sources like SLIC use it). When the data
    has ``modality_key`` (e.g. a datalist entry ``"modality": "MR"``), that modality overrides the default.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_key: str = "rgb",
        modality_key: str | None = "modality",
        allow_missing_keys: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_key, self.modality_key, self.kwargs = output_key, modality_key, kwargs
        self.t = SAM2Intensity(**kwargs)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        t = self.t
        mod = d.get(self.modality_key) if self.modality_key else None
        if isinstance(mod, str) and mod.upper() != t.modality:
            kw = dict(self.kwargs, modality=mod)
            if t.mode in ("windows", "percentiles"):
                kw["mode"] = None  # the default mode of the item's modality
            t = SAM2Intensity(**kw)
        for key in self.key_iterator(d):
            d[self.output_key] = t(d[key])
        return d
