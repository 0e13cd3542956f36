"""LAMB: our optimizer against a NumPy transcription of the published algorithm, and convergence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.pretrain.optim.lamb import Lamb


def reference_lamb(x0, grad_fn, steps, lr, beta1, beta2, eps, wd, bias_correction=True):
    """Algorithm 2 of You et al. (2019) in float64 NumPy, one layer, phi = identity."""
    x = np.asarray(x0, dtype=np.float64).copy()
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    trajectory = []
    for t in range(1, steps + 1):
        g = grad_fn(x, t)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        if bias_correction:
            m_hat = m / (1 - beta1**t)
            v_hat = v / (1 - beta2**t)
        else:
            m_hat, v_hat = m, v
        r = m_hat / (np.sqrt(v_hat) + eps) + wd * x
        w_norm, r_norm = np.linalg.norm(x), np.linalg.norm(r)
        trust = w_norm / r_norm if (w_norm > 0 and r_norm > 0) else 1.0
        x = x - lr * trust * r
        trajectory.append(x.copy())
    return trajectory


def run_ours(x0s, grad_fn, steps, **kwargs):
    params = [torch.nn.Parameter(torch.tensor(x0, dtype=torch.float32)) for x0 in x0s]
    opt = Lamb(params, **kwargs)
    trajectories = [[] for _ in params]
    for t in range(1, steps + 1):
        for i, p in enumerate(params):
            p.grad = torch.tensor(grad_fn[i](p.detach().double().numpy(), t), dtype=torch.float32)
        opt.step()
        for i, p in enumerate(params):
            trajectories[i].append(p.detach().double().numpy().copy())
    return trajectories


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_matches_reference_on_several_steps(bias_correction, wd):
    rng = np.random.default_rng(0)
    # two "layers" of different scale: LAMB's trust ratio is per layer, so they move differently
    a = rng.normal(size=(6, 6))
    b = rng.normal(size=6)
    x_lin = rng.normal(size=6)
    x_mat = 0.01 * rng.normal(size=(3, 4))
    noise = [rng.normal(size=(3, 4)) for _ in range(20)]

    def grad_quadratic(x, t):  # gradient of 0.5 * ||a x - b||^2, depends on the iterate
        return a.T @ (a @ x - b)

    def grad_noise(x, t):  # independent of the iterate
        return noise[t - 1] + x

    hp = dict(lr=0.02, beta1=0.9, beta2=0.99, eps=1e-6, wd=wd)
    ref_lin = reference_lamb(x_lin, grad_quadratic, 10, bias_correction=bias_correction, **hp)
    ref_mat = reference_lamb(x_mat, grad_noise, 10, bias_correction=bias_correction, **hp)
    ours_lin, ours_mat = run_ours(
        [x_lin, x_mat],
        [grad_quadratic, grad_noise],
        10,
        lr=0.02,
        betas=(0.9, 0.99),
        eps=1e-6,
        weight_decay=wd,
        bias_correction=bias_correction,
    )
    for ref, ours in ((ref_lin, ours_lin), (ref_mat, ours_mat)):
        for step, (r, o) in enumerate(zip(ref, ours)):
            np.testing.assert_allclose(o, r, rtol=2e-5, atol=1e-6, err_msg=f"step {step + 1}")
    # the parameters really moved (a test that cannot fail would pass with a no-op step)
    assert np.abs(ours_lin[-1] - x_lin).max() > 1e-3


def test_first_step_size_is_lr_times_weight_norm():
    """Step 1 with bias correction: |update| = ||x|| * lr along the (normalised) Adam direction."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(50))
    x0 = p.detach().clone()
    p.grad = torch.randn(50)
    Lamb([p], lr=0.1, weight_decay=0.0).step()
    step = p.detach() - x0
    assert torch.linalg.vector_norm(step).item() == pytest.approx(0.1 * x0.norm().item(), rel=1e-5)


def test_zero_guards_and_pure_decay():
    zero = torch.nn.Parameter(torch.zeros(4))
    zero.grad = torch.ones(4)
    Lamb([zero], lr=0.1).step()
    # ||w|| = 0 -> trust ratio 1: plain bias-corrected Adam step of size lr
    torch.testing.assert_close(zero.detach(), torch.full((4,), -0.1), rtol=1e-5, atol=1e-6)

    still = torch.nn.Parameter(torch.ones(3))
    still.grad = torch.zeros(3)
    Lamb([still], lr=0.1, weight_decay=0.0).step()
    torch.testing.assert_close(still.detach(), torch.ones(3))  # zero update -> no change, no NaN

    decayed = torch.nn.Parameter(torch.full((3,), 2.0))
    decayed.grad = torch.zeros(3)
    Lamb([decayed], lr=0.1, weight_decay=0.01).step()
    # only decay: r = wd * x, trust = ||x|| / ||wd x|| -> x <- x (1 - lr)
    torch.testing.assert_close(decayed.detach(), torch.full((3,), 1.8))


def test_converges_on_a_small_quadratic():
    torch.manual_seed(0)
    a = torch.randn(20, 8) / 4 + torch.eye(20, 8)
    target = torch.randn(8)
    b = a @ target
    x = torch.nn.Parameter(torch.randn(8))
    opt = Lamb([x], lr=0.05, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: (1 - it / 400) ** 0.9)
    losses = []
    for _ in range(400):
        opt.zero_grad()
        loss = 0.5 * (a @ x - b).pow(2).sum()
        loss.backward()
        losses.append(loss.item())
        opt.step()
        sched.step()
    assert losses[-1] < 1e-3 * losses[0]
    assert torch.allclose(x.detach(), target, atol=0.02)


def test_bf16_parameters_and_state_dict_roundtrip():
    p = torch.nn.Parameter(torch.randn(16, dtype=torch.bfloat16))
    opt = Lamb([p], lr=0.01, weight_decay=1e-5)
    p.grad = torch.randn(16, dtype=torch.bfloat16)
    opt.step()
    assert p.dtype == torch.bfloat16 and torch.isfinite(p.float()).all()
    state = opt.state_dict()
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = Lamb([q], lr=0.01, weight_decay=1e-5)
    opt2.load_state_dict(state)
    assert opt2.state[q]["step"] == 1


def test_rejects_bad_hyperparameters():
    p = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="betas"):
        Lamb(p, betas=(1.0, 0.999))
    with pytest.raises(ValueError, match="learning rate"):
        Lamb(p, lr=-1.0)
