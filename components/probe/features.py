"""Frozen-encoder probe: encoder loading and cached feature extraction.

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
from collections.abc import Hashable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform
from torch import nn

from components.checks.errors import VolumeError, error_message
from components.io.atomic import atomic_write
from components.network.blocks import Encoder
from components.network.nets import preset_config
from components.network.release_checkpoint import infer_release_config, load_release_checkpoint, read_release_state_dict
from components.probe.head import deepest

logger = logging.getLogger(__name__)


# -- encoder -----------------------------------------------------------------------------------


def build_encoder(
    preset: str = "small", pretrained: str | os.PathLike | None = None, prefer_ema: bool = True, **overrides: Any
) -> Encoder:
    """The MASS encoder of a network preset; with ``pretrained``, its weights from that file.

    ``pretrained``: a release checkpoint, our pretraining bundle's checkpoint (``model`` /
    ``ema_model`` container; EMA preferred) or a bare state dict; only ``encoder.*`` is loaded
    (:func:`components.network.release_checkpoint.load_release_checkpoint`, ``weights_only=True``).
    ``preset="auto"`` sizes the encoder from the checkpoint itself.
    ``image[B,1,D,H,W]`` (each dim a multiple of 16) -> 5 feature maps, deepest ``[B, C4, D/16, H/16, W/16]`` last.
    """
    if preset == "auto":
        if not pretrained:
            raise ValueError("preset='auto' needs a pretrained checkpoint to read the sizes from")
        cfg = infer_release_config(read_release_state_dict(pretrained, prefer_ema))
        cfg.update({k: v for k, v in overrides.items() if v is not None})
    else:
        cfg = preset_config(preset, **overrides)
    encoder = Encoder(int(cfg.get("in_channels", 1)), tuple(cfg["channels"]), tuple(cfg["num_blocks"]))
    if pretrained:
        info = load_release_checkpoint(pretrained, encoder, prefer_ema=prefer_ema)
        logger.info("encoder: %d tensors from %s (%s)", info["loaded"], pretrained, info["source"])
    return encoder


def encoder_fingerprint(encoder: nn.Module) -> str:
    """SHA-256 of the encoder's state dict (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(encoder.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# -- feature cache -----------------------------------------------------------------------------


class LoadFeatured(MapTransform):
    """Replace a cached-feature path under ``keys`` by its tensor ``[C, d, h, w]`` (``weights_only``)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = torch.load(d[key], map_location="cpu", weights_only=True)
        return d


def _save_tensor(tensor: torch.Tensor, path: str) -> None:
    torch.save(tensor, path)


class FeatureCache:
    """Deepest-level features of a frozen encoder, computed once per image and kept on disk.

    Args:
        encoder: the (frozen) encoder; put in eval mode, run under ``torch.no_grad()``.
        transform: deterministic preprocessing of a datalist item -> ``{"image": [1, D, H, W], ...}``.
        cache_dir: folder of ``<key>.pt`` files (``[C, d, h, w]`` float32 tensors).
        signature: preprocessing parameters that change the features (spacing, size, ...).
        device: device of the encoder forward.
        batch_size: images per encoder forward when filling the cache.
    """

    def __init__(
        self,
        encoder: nn.Module,
        transform: Any,
        cache_dir: str | os.PathLike,
        signature: Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
        image_key: str = "image",
        batch_size: int = 4,
    ) -> None:
        self.encoder = encoder
        self.transform = transform
        self.cache_dir = Path(cache_dir)
        self.signature = json.dumps(dict(signature or {}), sort_keys=True, default=str)
        self.device = torch.device(device)
        self.image_key = image_key
        self.batch_size = max(1, int(batch_size))
        self._fingerprint: str | None = None

    def key(self, item: Mapping[str, Any]) -> str:
        """Cache key of one datalist item (image file identity + preprocessing + encoder weights)."""
        if self._fingerprint is None:
            self._fingerprint = encoder_fingerprint(self.encoder)
        path = Path(item[self.image_key]).resolve()
        st = path.stat()
        ident = f"{path}|{st.st_size}|{st.st_mtime_ns}|{item.get('modality', '')}|{self.signature}|{self._fingerprint}"
        return hashlib.sha256(ident.encode()).hexdigest()[:32]

    def _image(self, item: Mapping[str, Any]) -> torch.Tensor:
        sample = self.transform(dict(item))
        image = sample[self.image_key]
        image = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
        return image.float()

    def _encode(self, images: list[torch.Tensor]) -> torch.Tensor:
        self.encoder.eval()
        with torch.no_grad():
            feat = deepest(self.encoder(torch.stack(images).to(self.device)))
        return feat.detach().float().cpu()

    def features(self, item: Mapping[str, Any]) -> torch.Tensor:
        """On-the-fly features of one item: preprocess + frozen encoder -> ``[C, d, h, w]`` (CPU, float32)."""
        return self._encode([self._image(item)])[0].contiguous()

    def extract(self, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Items with ``image`` replaced by the path of its cached feature file (computed if missing).

        Missing entries are encoded in batches of ``batch_size`` images of equal shape. An
        unreadable image is logged and skipped (the others go on); if none is left, raises.
        """
        out: list[dict[str, Any]] = []
        errors: list[str] = []
        pending: list[tuple[Path, torch.Tensor]] = []
        computed = 0

        def flush() -> None:
            nonlocal computed
            if not pending:
                return
            shapes = {tuple(p[1].shape) for p in pending}
            groups = [[p for p in pending if tuple(p[1].shape) == sh] for sh in shapes]
            for group in groups:
                feats = self._encode([p[1] for p in group])
                for (target, _), f in zip(group, feats):
                    atomic_write(target, partial(_save_tensor, f.clone().contiguous()))
                    computed += 1
            pending.clear()

        for item in items:
            where = item.get("row", item.get(self.image_key))
            try:
                target = self.cache_dir / f"{self.key(item)}.pt"
                if not target.exists():
                    pending.append((target, self._image(item)))
            except (VolumeError, OSError, RuntimeError, ValueError) as e:
                errors.append(f"{where}: {error_message(e)}")
                logger.error("skipping %s: %s", where, error_message(e))
                continue
            out.append({**dict(item), self.image_key: str(target), "source": str(item[self.image_key])})
            if len(pending) >= self.batch_size:
                flush()
        flush()
        logger.info(
            "features: %d computed, %d from cache %s, %d failed",
            computed,
            len(out) - computed,
            self.cache_dir,
            len(errors),
        )
        if errors and not out:
            raise RuntimeError("no image could be encoded:\n" + "\n".join(errors))
        return out
