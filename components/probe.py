"""Frozen-encoder probe: encoder loading, modality-aware normalisation, cached feature extraction.

Flow (frozen mode): every datalist image is preprocessed once (RAS, encoder spacing, intensity
normalisation, fixed size), passed through the frozen encoder, and its deepest feature map
``[C, d, h, w]`` is written to ``<cache_dir>/<key>.pt``. The key hashes the image file (path, size,
mtime), the preprocessing parameters and the encoder weights, so a changed input, setting or
encoder never reuses a stale entry. Head training then loads these small tensors
(:class:`LoadFeatured`) and runs in seconds per epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import ClipIntensityPercentiles, MapTransform, NormalizeIntensity, ScaleIntensityRange
from torch import nn

from components.attention_pool import deepest
from components.blocks import Encoder
from components.data import VolumeError
from components.network import preset_config

logger = logging.getLogger(__name__)


# -- encoder -----------------------------------------------------------------------------------

def _tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def read_weights(path: str | os.PathLike, prefer_ema: bool = True) -> dict[str, torch.Tensor]:
    """Full-model state dict from a release checkpoint, our pretraining container or a bare state dict.

    Release containers go through :func:`components.release_checkpoint.read_release_state_dict`
    (EMA preferred); other dicts are searched for ``ema_model``/``model``/``network``/``state_dict``.
    A ``module.`` prefix (DDP) is removed. Loads with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise VolumeError(path, "pretrained weights file does not exist")
    try:
        from components.release_checkpoint import ReleaseCheckpointError, read_release_state_dict

        state = read_release_state_dict(str(path), prefer_ema=prefer_ema)
    except (ImportError, KeyError, ValueError, TypeError) as release_error:
        if "ReleaseCheckpointError" in locals() and isinstance(release_error, ReleaseCheckpointError):
            pass
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt or pickled with objects
            raise VolumeError(path, f"cannot be read as a weights_only checkpoint ({type(e).__name__}: {e})") from e
        order = ("ema_model", "ema_state_dict", "model", "network", "state_dict", "net")
        if not prefer_ema:
            order = order[2:] + order[:2]
        state = obj if _tensor_dict(obj) else next((obj[k] for k in order if isinstance(obj, Mapping)
                                                    and k in obj and _tensor_dict(obj[k])), None)
        if state is None:
            keys = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
            raise VolumeError(path, f"no state dict found (top-level keys: {keys})") from None
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike, prefer_ema: bool = True) -> dict[str, Any]:
    """Load only the ``encoder.*`` part of a checkpoint into ``encoder`` (strict); returns an info dict."""
    state = read_weights(path, prefer_ema=prefer_ema)
    enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    if not enc:
        if set(state) == set(encoder.state_dict()):  # an encoder-only state dict
            enc = dict(state)
        else:
            raise VolumeError(path, f"no 'encoder.*' weights among {len(state)} keys (e.g. {sorted(state)[:3]})")
    own = encoder.state_dict()
    missing = sorted(set(own) - set(enc))
    unexpected = sorted(set(enc) - set(own))
    shapes = [f"{k}: {tuple(enc[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in enc
              and enc[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise VolumeError(path, f"encoder weights do not fit this encoder (wrong preset?): missing {missing[:5]}"
                                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}, "
                                f"shape mismatches {shapes[:5]}")
    encoder.load_state_dict(enc, strict=True)
    logger.info("loaded %d encoder tensors from %s", len(enc), path)
    return {"path": str(path), "num_tensors": len(enc)}


def build_encoder(preset: str = "small", pretrained: str | os.PathLike | None = None, prefer_ema: bool = True,
                  **overrides: Any) -> Encoder:
    """The MASS encoder of a network preset; with ``pretrained``, its weights from that file.

    ``image[B,1,D,H,W]`` (each dim a multiple of 16) -> 5 feature maps, deepest ``[B, C4, D/16, H/16, W/16]`` last.
    """
    cfg = preset_config(preset, **overrides)
    encoder = Encoder(int(cfg.get("in_channels", 1)), tuple(cfg["channels"]), tuple(cfg["num_blocks"]))
    if pretrained:
        load_encoder_weights(encoder, pretrained, prefer_ema=prefer_ema)
    return encoder


def encoder_fingerprint(encoder: nn.Module) -> str:
    """SHA-256 of the encoder's state dict (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(encoder.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# -- intensity ---------------------------------------------------------------------------------

class ModalityNormalized(MapTransform):
    """Per-row modality-aware intensity normalisation (the pretraining recipe).

    CT: clip to ``ct_window`` HU, then z-score. MR/PET: clip to the ``percentiles`` of the volume,
    then z-score. The modality is read from ``data[modality_key]`` (``default`` when absent).
    """

    def __init__(self, keys: KeysCollection, modality_key: str = "modality", default: str = "MR",
                 ct_window: Sequence[float] = (-991.0, 500.0), percentiles: Sequence[float] = (2.0, 98.0),
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modality_key = modality_key
        self.default = default
        lo, hi = (float(v) for v in ct_window)
        self.ct_clip = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=lo, b_max=hi, clip=True)
        self.mr_clip = ClipIntensityPercentiles(lower=float(percentiles[0]), upper=float(percentiles[1]))
        self.zscore = NormalizeIntensity()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        modality = str(d.get(self.modality_key) or self.default).upper()
        if modality not in ("CT", "MR", "MRI", "PET"):
            raise ValueError(f"unknown modality {modality!r} (expected CT, MR or PET)")
        for key in self.key_iterator(d):
            clip = self.ct_clip if modality == "CT" else self.mr_clip
            d[key] = self.zscore(clip(d[key]))
        return d


# -- feature cache -----------------------------------------------------------------------------

class LoadFeatured(MapTransform):
    """Replace a cached-feature path under ``keys`` by its tensor ``[C, d, h, w]`` (``weights_only``)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = torch.load(d[key], map_location="cpu", weights_only=True)
        return d


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class FeatureCache:
    """Deepest-level features of a frozen encoder, computed once per image and kept on disk.

    Args:
        encoder: the (frozen) encoder; put in eval mode, run under ``torch.no_grad()``.
        transform: deterministic preprocessing of a datalist item -> ``{"image": [1, D, H, W], ...}``.
        cache_dir: folder of ``<key>.pt`` files (``[C, d, h, w]`` float32 tensors).
        signature: preprocessing parameters that change the features (spacing, size, ...).
        device: device of the encoder forward.
    """

    def __init__(self, encoder: nn.Module, transform: Any, cache_dir: str | os.PathLike,
                 signature: Mapping[str, Any] | None = None, device: str | torch.device = "cpu",
                 image_key: str = "image") -> None:
        self.encoder = encoder
        self.transform = transform
        self.cache_dir = Path(cache_dir)
        self.signature = json.dumps(dict(signature or {}), sort_keys=True, default=str)
        self.device = torch.device(device)
        self.image_key = image_key
        self._fingerprint: str | None = None

    def key(self, item: Mapping[str, Any]) -> str:
        """Cache key of one datalist item (image file identity + preprocessing + encoder weights)."""
        if self._fingerprint is None:
            self._fingerprint = encoder_fingerprint(self.encoder)
        path = Path(item[self.image_key]).resolve()
        st = path.stat()
        ident = f"{path}|{st.st_size}|{st.st_mtime_ns}|{item.get('modality', '')}|{self.signature}|{self._fingerprint}"
        return hashlib.sha256(ident.encode()).hexdigest()[:32]

    def features(self, item: Mapping[str, Any]) -> torch.Tensor:
        """On-the-fly features of one item: preprocess + frozen encoder -> ``[C, d, h, w]`` (CPU, float32)."""
        sample = self.transform(dict(item))
        image = sample[self.image_key]
        image = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
        image = image.float().unsqueeze(0).to(self.device)
        self.encoder.eval()
        with torch.no_grad():
            feat = deepest(self.encoder(image))
        return feat[0].detach().float().cpu().contiguous()

    def extract(self, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Items with ``image`` replaced by the path of its cached feature file (computed if missing).

        An unreadable image is logged and skipped (the others go on); if none is left, raises.
        """
        out, errors, computed = [], [], 0
        for item in items:
            try:
                target = self.cache_dir / f"{self.key(item)}.pt"
                if not target.exists():
                    _atomic_save(self.features(item), target)
                    computed += 1
            except (VolumeError, OSError, RuntimeError, ValueError) as e:
                where = item.get("row", item.get(self.image_key))
                errors.append(f"{where}: {e}")
                logger.error("skipping %s: %s", where, e)
                continue
            out.append({**dict(item), self.image_key: str(target), "source": str(item[self.image_key])})
        logger.info("features: %d computed, %d from cache %s, %d failed", computed, len(out) - computed,
                    self.cache_dir, len(errors))
        if errors and not out:
            raise RuntimeError("no image could be encoded:\n" + "\n".join(errors))
        return out
