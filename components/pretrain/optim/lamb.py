"""LAMB optimizer (You et al., 2019, "Large Batch Optimization for Deep Learning", Algorithm 2).

MASS pretrains with LAMB (lr 2e-3, weight decay 1e-5). Neither torch nor MONAI ships it, so this
module implements the published update for one parameter tensor (one "layer") ``x``::

    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1 ** t),  v_hat = v / (1 - beta2 ** t)     # bias correction
    r = m_hat / (sqrt(v_hat) + eps) + weight_decay * x
    trust = phi(||x||) / ||r||   (1 if either norm is 0)
    x = x - lr * trust * r

``phi`` is the identity, or ``min(||x||, max_weight_norm)`` when ``max_weight_norm`` is set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["Lamb"]


class Lamb(Optimizer):
    """Layer-wise Adaptive Moments optimizer for Batch training.

    Args:
        params: iterable of parameters or parameter-group dicts.
        lr: learning rate.
        betas: coefficients of the running averages of the gradient and its square.
        eps: term added to the denominator for numerical stability.
        weight_decay: decoupled weight decay ``lambda`` added to the Adam direction before the
            trust ratio (set it to 0 in a group for biases / norm weights if wanted).
        bias_correction: divide the moments by ``1 - beta ** t`` (Algorithm 2); turn off to
            reproduce implementations that skip it.
        max_weight_norm: clip ``||x||`` in the trust ratio at this value (``None``: no clip).
        trust_ratio_max: upper bound of the trust ratio itself (``None``: no bound).

    Example::

        opt = Lamb(net.parameters(), lr=2e-3, weight_decay=1e-5)
        loss.backward(); opt.step(); opt.zero_grad()
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        bias_correction: bool = True,
        max_weight_norm: float | None = None,
        trust_ratio_max: float | None = None,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Lamb: invalid learning rate {lr}")
        if eps < 0.0:
            raise ValueError(f"Lamb: invalid eps {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Lamb: invalid betas {betas}, each must be in [0, 1)")
        if weight_decay < 0.0:
            raise ValueError(f"Lamb: invalid weight_decay {weight_decay}")
        if max_weight_norm is not None and max_weight_norm <= 0:
            raise ValueError(f"Lamb: max_weight_norm must be > 0, got {max_weight_norm}")
        if trust_ratio_max is not None and trust_ratio_max <= 0:
            raise ValueError(f"Lamb: trust_ratio_max must be > 0, got {trust_ratio_max}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            bias_correction=bias_correction,
            max_weight_norm=max_weight_norm,
            trust_ratio_max=trust_ratio_max,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one optimisation step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                grad = grad.float()
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)

                if group["bias_correction"]:
                    m_hat = exp_avg / (1.0 - beta1**t)
                    v_hat = exp_avg_sq / (1.0 - beta2**t)
                else:
                    m_hat, v_hat = exp_avg, exp_avg_sq
                weight = p.float()
                update = m_hat / (v_hat.sqrt() + eps)
                if wd != 0.0:
                    update.add_(weight, alpha=wd)

                w_norm = torch.linalg.vector_norm(weight)
                if group["max_weight_norm"] is not None:
                    w_norm = w_norm.clamp(max=group["max_weight_norm"])
                u_norm = torch.linalg.vector_norm(update)
                # zero guards: a zero-initialised layer or a zero update keeps the Adam step size
                trust = torch.where(
                    (w_norm > 0) & (u_norm > 0), w_norm / u_norm.clamp(min=torch.finfo(torch.float32).tiny), 1.0
                )
                if group["trust_ratio_max"] is not None:
                    trust = trust.clamp(max=group["trust_ratio_max"])
                state["trust_ratio"] = trust  # kept for logging / inspection
                p.add_((update * (-lr * trust)).to(p.dtype))
        return loss
