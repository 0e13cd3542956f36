"""Import checkpoints in the authors' release container format into our networks.

Container: a ``torch.save`` dict with ``model`` (state dict) and optionally ``ema_model`` or
``ema_state_dict`` (EMA weights, preferred for inference), ``config``, ``optimizer``, ``epoch`` ...
A bare state dict is accepted too. Keys may carry ``module.`` (DDP) and ``_orig_mod.``
(torch.compile) prefixes; they are stripped. Our module names equal the release's, so the key map
:data:`KEY_MAP` is the identity; it is applied anyway so that a renamed module needs one entry.
Everything is read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from components.checks.errors import InputError
from components.network.blocks import Encoder

# release key prefix -> our key prefix (identity: our modules use the release's names)
KEY_MAP: dict[str, str] = {}
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
EMA_CONTAINERS = ("ema_model", "ema_state_dict")
PLAIN_CONTAINERS = ("model", "state_dict", "model_state_dict")
BOOKKEEPING_KEYS = ("n_averaged",)  # torch.optim.swa_utils.AveragedModel counter


class ReleaseCheckpointError(InputError):
    """A checkpoint cannot be read or does not fit the network; the message says why."""

    def __init__(
        self,
        message: str,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        mismatched: list[tuple[str, tuple, tuple]] | None = None,
    ) -> None:
        self.message = message
        self.missing = list(missing or [])
        self.unexpected = list(unexpected or [])
        self.mismatched = list(mismatched or [])
        parts = [message]
        if self.missing:
            parts.append(f"missing keys ({len(self.missing)}): {_preview(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected keys ({len(self.unexpected)}): {_preview(self.unexpected)}")
        if self.mismatched:
            shown = [f"{k}: checkpoint {list(a)} vs network {list(b)}" for k, a, b in self.mismatched]
            parts.append(f"shape mismatches ({len(shown)}): {_preview(shown)}")
        self.text = "\n  ".join(parts)
        super().__init__(self.text)

    def __str__(self) -> str:
        return self.text

    def __reduce__(self):  # pickle / copy rebuild it from all its arguments (Exception's default passes only args)
        return type(self), (self.message, self.missing, self.unexpected, self.mismatched)


def _preview(items: list[str], limit: int = 12) -> str:
    text = ", ".join(items[:limit])
    return text + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def _clean_key(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
        key = key.replace("._orig_mod.", ".")
    for src, dst in KEY_MAP.items():
        if key.startswith(src):
            key = dst + key[len(src) :]
    return key


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def read_release_container(path: str | os.PathLike) -> dict:
    """Load the raw container (``weights_only=True``); clear error naming ``path`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ReleaseCheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle errors or forbidden globals
        raise ReleaseCheckpointError(
            f"{path}: not a readable PyTorch checkpoint (corrupt, truncated or not made by torch.save): {exc}"
        ) from exc
    if not isinstance(obj, dict):
        raise ReleaseCheckpointError(f"{path}: checkpoint holds a {type(obj).__name__}, expected a dict")
    return obj


def read_release_state_dict(path: str | os.PathLike, prefer_ema: bool = True, return_source: bool = False):
    """State dict of a release checkpoint (EMA weights first when ``prefer_ema``), keys cleaned.

    Returns ``dict[str, Tensor]`` (or ``(state_dict, source_name)`` with ``return_source``).
    """
    container = read_release_container(path)
    order = EMA_CONTAINERS + PLAIN_CONTAINERS if prefer_ema else PLAIN_CONTAINERS + EMA_CONTAINERS
    source, raw = None, None
    for name in order:
        if _is_state_dict(container.get(name)):
            source, raw = name, container[name]
            break
    if raw is None and _is_state_dict(container):
        source, raw = "<bare state dict>", container
    if raw is None:
        raise ReleaseCheckpointError(
            f"{path}: no state dict found; top-level keys: {sorted(map(str, container))} "
            f"(expected one of {list(order)})"
        )
    state = {_clean_key(k): v for k, v in raw.items() if k.split(".")[-1] not in BOOKKEEPING_KEYS}
    return (state, source) if return_source else state


def infer_release_config(state: dict[str, torch.Tensor]) -> dict:
    """Network configuration (channels, num_blocks, tn, max_window) read off a release state dict."""
    try:
        channels = [int(state["encoder.inc.conv1.weight"].shape[0])]
        channels += [int(state[f"encoder.down{i}.conv.1.conv1.conv.weight"].shape[0]) for i in range(1, 5)]
        num_blocks = []
        for i in range(1, 5):
            idx = {int(m.group(1)) for k in state if (m := re.match(rf"encoder\.down{i}\.conv\.(\d+)\.", k))}
            num_blocks.append(len(idx))
        cfg = {
            "channels": tuple(channels),
            "num_blocks": tuple(num_blocks),
            "in_channels": int(state["encoder.inc.conv1.weight"].shape[1]),
        }
    except KeyError as exc:
        raise ReleaseCheckpointError(f"state dict lacks the release encoder key {exc}") from None
    if "task_prior_0" in state:
        cfg["tn"] = int(state["task_prior_0"].shape[0])
    if "task_embedding.0.pos_embed.embedding" in state:
        cfg["max_window"] = int(state["task_embedding.0.pos_embed.embedding"].shape[-1])
    return cfg


def preset_of_checkpoint(path: str | os.PathLike, prefer_ema: bool = True, encoder_only: bool = False) -> str:
    """Name of the network preset (:data:`components.network.nets.PRESETS`) the checkpoint was made with.

    The checkpoint may be any container :func:`read_release_state_dict` reads (release, our pretraining
    bundle's ``model``/``ema_model``, a bare state dict); the EMA weights are read first when
    ``prefer_ema`` (same shapes as the plain ones). Encoder channels and blocks must match; so must
    ``tn`` (task-prior tokens) and ``max_window`` (positional embedding) when the checkpoint holds
    them, unless ``encoder_only`` (a frozen-encoder probe loads the encoder alone). Raises
    ``ValueError`` (:class:`ReleaseCheckpointError`) when no preset fits.
    """
    from components.network.nets import PRESETS  # local import: network imports nothing from here

    cfg = infer_release_config(read_release_state_dict(path, prefer_ema))
    for name, preset in PRESETS.items():
        if tuple(preset["channels"]) != tuple(cfg["channels"]) or tuple(preset["num_blocks"]) != tuple(
            cfg["num_blocks"]
        ):
            continue
        if encoder_only or all(cfg.get(k, preset[k]) == preset[k] for k in ("tn", "max_window")):
            return name
    extra = "" if encoder_only else f", tn {cfg.get('tn')}, max_window {cfg.get('max_window')}"
    raise ReleaseCheckpointError(
        f"{path}: weights (channels {list(cfg['channels'])}, blocks {list(cfg['num_blocks'])}{extra}) "
        f"match no preset of {sorted(PRESETS)}"
    )


def _target_subset(state: dict[str, torch.Tensor], net: nn.Module) -> tuple[dict, list[str]]:
    """Pick the part of a full-model state dict that ``net`` consumes; returns (subset, ignored keys)."""
    from components.network.nets import FixedClassNet  # local import: network imports nothing from here

    if isinstance(net, Encoder):
        sub = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
        return sub, [k for k in state if not k.startswith("encoder.")]
    if isinstance(net, FixedClassNet):
        keep = ("encoder.", "decoder.", "out.", "task_prior_")
        return ({k: v for k, v in state.items() if k.startswith(keep)}, [k for k in state if not k.startswith(keep)])
    return dict(state), []


def load_release_checkpoint(path: str | os.PathLike, net: nn.Module, prefer_ema: bool = True) -> dict:
    """Load a release checkpoint into ``net`` (MASSNet, MASSNet.encoder / Encoder, or FixedClassNet).

    FixedClassNet takes encoder, decoder and head; its class embeddings are taken from the
    checkpoint's ``task_prior_*`` only when their shapes fit (else reported under ``skipped``).
    Raises :class:`ReleaseCheckpointError` listing missing/unexpected keys and shape mismatches.
    Returns info: path, source container, config, epoch, loaded/ignored/skipped keys.
    """
    state, source = read_release_state_dict(path, prefer_ema, return_source=True)
    container = read_release_container(path) if source != "<bare state dict>" else {}
    subset, ignored = _target_subset(state, net)
    own = net.state_dict()
    skipped: list[str] = []
    from components.network.nets import FixedClassNet

    if isinstance(net, FixedClassNet):
        for key in [k for k in subset if k.startswith("task_prior_")]:
            if key not in own or subset[key].shape != own[key].shape:
                skipped.append(key)
                subset.pop(key)
        for key in [k for k in own if k.startswith("task_prior_") and k not in subset]:
            subset[key] = own[key]  # keep current class embeddings
    missing = [k for k in own if k not in subset]
    unexpected = [k for k in subset if k not in own]
    mismatched = [
        (k, tuple(subset[k].shape), tuple(own[k].shape)) for k in subset if k in own and subset[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        raise ReleaseCheckpointError(
            f"{path}: checkpoint ({source}) does not fit {type(net).__name__}", missing, unexpected, mismatched
        )
    net.load_state_dict(subset, strict=True)
    return {
        "path": str(path),
        "source": source,
        "config": container.get("config"),
        "epoch": container.get("epoch"),
        "loaded": len(subset) - len(skipped),
        "ignored": ignored,
        "skipped": skipped,
    }


def network_from_release_checkpoint(path: str | os.PathLike, prefer_ema: bool = True, memory_efficient: bool = True):
    """Build a MASSNet sized from the checkpoint itself and load it. Returns (net, info)."""
    from components.network.nets import MASSNet

    state = read_release_state_dict(path, prefer_ema)
    try:
        cfg = infer_release_config(state)
    except ReleaseCheckpointError as exc:
        raise ReleaseCheckpointError(f"{path}: {exc}") from None
    net = MASSNet(memory_efficient=memory_efficient, **cfg)
    info = load_release_checkpoint(path, net, prefer_ema)
    info["inferred_config"] = cfg
    return net, info
