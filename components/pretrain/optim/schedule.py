"""Per-iteration learning-rate schedules of pretraining: one-cycle (the release's) or warm-up + polynomial
decay (the paper's text), both keeping the horizon they were built with when a checkpoint is loaded.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["warmup_poly_lambda", "build_lr_scheduler"]


def warmup_poly_lambda(step: int, total_steps: int, warmup_steps: int, power: float = 0.9) -> float:
    """LR factor: linear warm-up to 1 over ``warmup_steps``, then ``(1 - progress) ** power`` to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, 1.0 - progress) ** power


class _WarmupPoly:
    """Picklable LR lambda (a bound callable object, saved with the scheduler state)."""

    def __init__(self, total_steps: int, warmup_steps: int, power: float) -> None:
        self.total_steps, self.warmup_steps, self.power = int(total_steps), int(warmup_steps), float(power)

    def __call__(self, step: int) -> float:
        return warmup_poly_lambda(step, self.total_steps, self.warmup_steps, self.power)


class _OneCycleLR(torch.optim.lr_scheduler.OneCycleLR):
    """``OneCycleLR`` that keeps the horizon it was built with when a checkpoint is loaded."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        horizon = {k: self.__dict__[k] for k in ("total_steps", "_schedule_phases")}
        super().load_state_dict(state_dict)
        self.__dict__.update(horizon)


class _LambdaLR(torch.optim.lr_scheduler.LambdaLR):
    """``LambdaLR`` that keeps the LR function (and its horizon) it was built with when a checkpoint is loaded."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({**state_dict, "lr_lambdas": [None] * len(self.lr_lambdas)})


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    total_steps: int,
    warmup: float = 0.05,
    power: float = 0.9,
    div_factor: float = 25.0,
    final_div_factor: float = 1000.0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration schedule over ``total_steps`` optimiser steps.

    ``"onecycle"`` (the release's default): torch's ``OneCycleLR`` from ``lr / div_factor`` up to the
    optimiser's ``lr`` over the fraction ``warmup``, cosine down to ``lr / div_factor / final_div_factor``
    (release: 5 %, 25, 1000). ``"poly"`` (the paper's text): linear warm-up over ``warmup``, then
    ``(1 - progress) ** power``.

    Loading a checkpoint restores the step count, not the horizon: a run resumed with a larger
    ``--max_epochs`` continues at its step on the schedule over the new ``total_steps``.
    """
    total_steps = max(1, int(total_steps))
    if name == "poly":
        return _LambdaLR(optimizer, _WarmupPoly(total_steps, round(warmup * total_steps), power))
    if name == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return _OneCycleLR(
            optimizer,
            max_lr=max_lr,
            total_steps=total_steps,
            pct_start=max(warmup, 1e-3),
            div_factor=div_factor,
            final_div_factor=final_div_factor,
        )
    raise ValueError(f"lr schedule must be 'poly' or 'onecycle', got {name!r}")
