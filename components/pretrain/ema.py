"""Exponential moving average (EMA) of model weights, as an Ignite/MONAI handler.

``ema = decay * ema + (1 - decay) * weights`` after every optimiser step (release: decay 0.99);
buffers (e.g. norm statistics) are copied. The shadow model is a plain module (DDP/compile wrappers
are unwrapped), so ``ema.state_dict()`` has the same keys as the network's own state dict and can be
saved beside it (``{"model": ..., "ema_model": ...}``, the release's container layout).

Example (bundle config)::

    "ema": {"_target_": "components.pretrain.ema.ModelEMA", "model": "@network", "decay": 0.99},
    "train#handlers": [..., "@ema", ...]
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

__all__ = ["ModelEMA", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside ``DistributedDataParallel`` / ``DataParallel`` / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class ModelEMA:
    """EMA copy of ``model``; attach to a trainer to update after every iteration.

    Args:
        model: the trained network (possibly wrapped).
        decay: EMA decay in [0, 1).
        update_every: update every this many iterations.
    """

    def __init__(self, model: nn.Module, decay: float = 0.99, update_every: int = 1) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ModelEMA: decay must be in [0, 1), got {decay}")
        self.model = model
        self.decay, self.update_every = float(decay), int(update_every)
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module | None = None) -> None:
        """One EMA step from ``model`` (default: the model given at construction)."""
        src = unwrap_model(model if model is not None else self.model)
        d = self.decay
        for e, p in zip(self.module.parameters(), src.parameters()):
            e.mul_(d).add_(p.detach().to(e.dtype), alpha=1.0 - d)
        for e, b in zip(self.module.buffers(), src.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> Any:
        return self.module.load_state_dict(state_dict, strict=strict)

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.update_every), lambda e: self.update())
