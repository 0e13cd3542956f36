"""Reference / query view augmentation for mask-guided pretraining (paper §3.3, §7.4).

Each view is a context crop (e.g. 168³) of one volume together with its selected masks. The
*spatial* part (one random affine, then the centre ``crop_size`` window) is applied jointly to the
image and its masks, so masks stay on the anatomy; the *appearance* part (brightness, gamma,
contrast, blur, noise) touches the image only. The reference view is weakly augmented, the query
view strongly (release defaults below). Every magnitude is a plain number, so the Table 9
ablations are overrides: ``magnitude="small"|"medium"|"large"`` scales all deviations from identity
(0.5x / 1x / 1.5x, our reading of the table), ``spatial=False`` / ``appearance=False`` switch a
family off.

Masks are resampled with nearest neighbour. To keep that cheap, up to 24 masks are packed as bits
of one float32 channel (exact below 2^24): nearest sampling copies one source voxel, so the bits
survive the warp unchanged (:func:`pack_masks` / :func:`unpack_masks`).

Example::

    aug = TwoViewAugment(crop_size=(64, 64, 64))
    aug.set_random_state(0)
    out = aug(ref_img, ref_masks, qry_img, qry_masks)   # images [1, *ctx], masks bool [N, *ctx]
    out["query_image"].shape  # (1, 64, 64, 64); out["query_affine"]: 4x4 matrix of the warp
"""

from __future__ import annotations

import copy
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    RandGaussianSmoothd,
    Randomizable,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandShiftIntensityd,
)

__all__ = [
    "AUG_DEFAULTS",
    "MAGNITUDES",
    "view_params",
    "pack_masks",
    "unpack_masks",
    "JointAffined",
    "appearance_transforms",
    "TwoViewAugment",
]

# Release defaults (weak = reference, strong = query). Ranges are (low, high) factors; stds are absolute
# on z-scored intensities; angles in degrees; blur sigma in voxels.
AUG_DEFAULTS: dict[str, dict[str, Any]] = {
    "weak": {
        "affine_prob": 0.5,
        "scale": 0.3,
        "rotate": 30.0,
        "shear": 0.0,
        "aug_prob": 0.2,
        "brightness": (0.9, 1.1),
        "brightness_add_std": 0.1,
        "gamma": (0.8, 1.2),
        "contrast": (0.8, 1.2),
        "blur": (0.8, 1.2),
        "noise_std": 0.02,
    },
    "strong": {
        "affine_prob": 0.8,
        "scale": 0.3,
        "rotate": 30.0,
        "shear": 0.1,
        "aug_prob": 0.2,
        "brightness": (0.8, 1.3),
        "brightness_add_std": 0.15,
        "gamma": (0.8, 1.3),
        "contrast": (0.8, 1.3),
        "blur": (0.7, 1.5),
        "noise_std": 0.04,
    },
}
MAGNITUDES: dict[str, float] = {"small": 0.5, "medium": 1.0, "large": 1.5}
_BITS = 24  # float32 represents integers below 2**24 exactly


def _scale_range(r: Sequence[float], k: float) -> tuple[float, float]:
    """Scale the deviation of a factor range from 1 by ``k``."""
    return (1.0 + (float(r[0]) - 1.0) * k, 1.0 + (float(r[1]) - 1.0) * k)


def view_params(
    strength: str,
    magnitude: str | float = "medium",
    spatial: bool = True,
    appearance: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Augmentation parameters of one view: release defaults, scaled by ``magnitude``, then ``overrides``."""
    if strength not in AUG_DEFAULTS:
        raise ValueError(f"strength must be one of {sorted(AUG_DEFAULTS)}, got {strength!r}")
    k = MAGNITUDES[magnitude] if isinstance(magnitude, str) else float(magnitude)
    p = copy.deepcopy(AUG_DEFAULTS[strength])
    for key in ("scale", "rotate", "shear", "brightness_add_std", "noise_std"):
        p[key] = float(p[key]) * k
    for key in ("brightness", "gamma", "contrast"):
        p[key] = _scale_range(p[key], k)
    p["blur"] = (float(p["blur"][0]) * k, float(p["blur"][1]) * k)
    if not spatial:
        p["affine_prob"] = 0.0
    if not appearance:
        p["aug_prob"] = 0.0
    unknown = set(overrides or {}) - set(p)
    if unknown:
        raise ValueError(f"unknown augmentation parameters {sorted(unknown)}; known: {sorted(p)}")
    p.update(dict(overrides or {}))
    return p


def pack_masks(masks: torch.Tensor) -> torch.Tensor:
    """Bool masks ``[N, *spatial]`` -> float32 bit codes ``[ceil(N/24), *spatial]``."""
    masks = torch.as_tensor(masks)
    n = int(masks.shape[0])
    groups = max(1, math.ceil(n / _BITS))
    out = torch.zeros((groups, *masks.shape[1:]), dtype=torch.float32)
    for g in range(groups):
        part = masks[g * _BITS : (g + 1) * _BITS].reshape(-1 if n else 0, *masks.shape[1:])
        w = torch.tensor([float(1 << i) for i in range(part.shape[0])], dtype=torch.float32)
        # a weighted sum of distinct powers of two below 2**24 is exact in float32
        out[g] = torch.tensordot(w, part.to(torch.float32), dims=1) if part.shape[0] else 0.0
    return out


def unpack_masks(codes: torch.Tensor, n: int) -> torch.Tensor:
    """Float32 bit codes ``[G, *spatial]`` -> bool masks ``[n, *spatial]`` (inverse of :func:`pack_masks`)."""
    ci = torch.as_tensor(codes).round().to(torch.int32)
    out = torch.empty((n, *ci.shape[1:]), dtype=torch.bool)
    for i in range(n):
        out[i] = torch.bitwise_and(ci[i // _BITS], 1 << (i % _BITS)) != 0
    return out


class JointAffined(Randomizable):
    """With probability ``prob`` one random affine (scale, rotation, shear about the centre) for all
    ``keys``, else the identity; the output is the centre ``spatial_size`` window.

    The 4x4 matrix used (MONAI grid convention: output voxel offsets from the output centre ->
    input voxel offsets from the input centre) is stored under ``matrix_key``.
    """

    def __init__(
        self,
        keys: Sequence[str],
        spatial_size: Sequence[int],
        prob: float,
        scale: float,
        rotate: float,
        shear: float,
        mode: Sequence[str],
        matrix_key: str = "affine_matrix",
    ) -> None:
        self.keys, self.prob, self.matrix_key = list(keys), float(prob), matrix_key
        self.spatial_size = tuple(int(s) for s in spatial_size)
        rad = math.radians(rotate)
        self.affine = RandAffined(
            keys=self.keys,
            prob=1.0,
            spatial_size=self.spatial_size,
            mode=list(mode),
            padding_mode="zeros",
            rotate_range=(rad, rad, rad),
            scale_range=(scale, scale, scale),
            shear_range=(shear,) * 6,
        )
        self.identity = RandAffined(
            keys=self.keys, prob=0.0, spatial_size=self.spatial_size, mode=list(mode), padding_mode="zeros"
        )

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> JointAffined:
        super().set_random_state(seed, state)
        self.affine.set_random_state(seed=int(self.R.randint(2**31 - 1)))
        return self

    def randomize(self, data: Any = None) -> None:
        self._do = self.R.rand() < self.prob

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        self.randomize()
        if self._do:
            d = self.affine(dict(data))
            m = self.affine.rand_affine.rand_affine_grid.get_transformation_matrix()
            matrix = torch.as_tensor(m, dtype=torch.float64)
        else:
            d = self.identity(dict(data))
            matrix = torch.eye(4, dtype=torch.float64)
        d[self.matrix_key] = matrix
        return d


def appearance_transforms(key: str, p: Mapping[str, Any]) -> Compose:
    """Image-only intensity augmentation, each transform with probability ``p["aug_prob"]``."""
    q = float(p["aug_prob"])
    b_lo, b_hi = p["brightness"]
    c_lo, c_hi = p["contrast"]
    shift = float(p["brightness_add_std"]) * math.sqrt(3.0)  # uniform with the release's normal std
    return Compose(
        [
            RandScaleIntensityd(key, factors=(b_lo - 1.0, b_hi - 1.0), prob=q),
            RandShiftIntensityd(key, offsets=(-shift, shift), prob=q),
            RandAdjustContrastd(key, gamma=tuple(p["gamma"]), retain_stats=True, prob=q),
            RandScaleIntensityFixedMeand(
                key, factors=(c_lo - 1.0, c_hi - 1.0), fixed_mean=True, preserve_range=True, prob=q
            ),
            RandGaussianSmoothd(
                key, sigma_x=tuple(p["blur"]), sigma_y=tuple(p["blur"]), sigma_z=tuple(p["blur"]), prob=q
            ),
            RandGaussianNoised(key, std=float(p["noise_std"]), sample_std=False, prob=q),
        ]
    )


class TwoViewAugment(Randomizable):
    """Weak (reference) and strong (query) augmentation of two context crops.

    Args:
        crop_size: output window of both views (each dim <= the context size).
        magnitude: ``"small" | "medium" | "large"`` or a float multiplier of all deviations.
        spatial: apply the joint affine (both views).
        appearance: apply intensity augmentation (both views).
        weak, strong: per-view overrides of :data:`AUG_DEFAULTS` keys.

    ``__call__(ref_image[1,*ctx], ref_masks[N,*ctx] bool, query_image, query_masks)`` returns a dict with
    ``ref_image``/``query_image`` float ``[1, *crop]``, ``ref_masks``/``query_masks`` bool ``[N, *crop]``
    and ``ref_affine``/``query_affine`` (4x4 float64 warp matrices).
    """

    def __init__(
        self,
        crop_size: Sequence[int] = (128, 128, 128),
        magnitude: str | float = "medium",
        spatial: bool = True,
        appearance: bool = True,
        weak: Mapping[str, Any] | None = None,
        strong: Mapping[str, Any] | None = None,
    ) -> None:
        self.crop_size = tuple(int(c) for c in crop_size)
        self.params = {
            "weak": view_params("weak", magnitude, spatial, appearance, weak),
            "strong": view_params("strong", magnitude, spatial, appearance, strong),
        }
        self.spatial_tf, self.appearance_tf = {}, {}
        for name, p in self.params.items():
            self.spatial_tf[name] = JointAffined(
                ["image", "codes"],
                self.crop_size,
                p["affine_prob"],
                p["scale"],
                p["rotate"],
                p["shear"],
                mode=["bilinear", "nearest"],
            )
            self.appearance_tf[name] = appearance_transforms("image", p)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> TwoViewAugment:
        super().set_random_state(seed, state)
        for name in ("weak", "strong"):
            self.spatial_tf[name].set_random_state(seed=int(self.R.randint(2**31 - 1)))
            self.appearance_tf[name].set_random_state(seed=int(self.R.randint(2**31 - 1)))
        return self

    def randomize(self, data: Any = None) -> None:  # randomness lives in the sub-transforms
        pass

    def view(
        self, strength: str, image: torch.Tensor, codes: torch.Tensor, n: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One view from an image ``[1,*ctx]`` and packed masks (:func:`pack_masks`) ``[G,*ctx]``.

        Returns ``(image [1,*crop], masks bool [n,*crop], matrix 4x4)``.
        """
        d: dict[Hashable, Any] = {
            "image": torch.as_tensor(image, dtype=torch.float32),
            "codes": torch.as_tensor(codes, dtype=torch.float32),
        }
        d = self.spatial_tf[strength](d)
        matrix = d["affine_matrix"]
        img = self.appearance_tf[strength]({"image": d["image"]})["image"]
        img = img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(img)
        codes_out = d["codes"].as_tensor() if hasattr(d["codes"], "as_tensor") else d["codes"]
        return img.float().contiguous(), unpack_masks(codes_out, n), matrix

    def from_codes(
        self,
        ref_image: torch.Tensor,
        ref_codes: torch.Tensor,
        query_image: torch.Tensor,
        query_codes: torch.Tensor,
        n: int,
    ) -> dict[str, torch.Tensor]:
        """Both views from packed masks (the fast path used by the pretraining dataset)."""
        ri, rm, ra = self.view("weak", ref_image, ref_codes, n)
        qi, qm, qa = self.view("strong", query_image, query_codes, n)
        return {
            "ref_image": ri,
            "ref_masks": rm,
            "ref_affine": ra,
            "query_image": qi,
            "query_masks": qm,
            "query_affine": qa,
        }

    def __call__(
        self, ref_image: torch.Tensor, ref_masks: torch.Tensor, query_image: torch.Tensor, query_masks: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        n = int(ref_masks.shape[0])
        return self.from_codes(ref_image, pack_masks(ref_masks), query_image, pack_masks(query_masks), n)
