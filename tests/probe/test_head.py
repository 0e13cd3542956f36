"""Attention-pooling head and the frozen/trainable probe model."""

from __future__ import annotations

import pytest
import torch

from components.probe.features import build_encoder
from components.probe.head import AttentionPoolHead, ProbeClassifier, loss_for_task, probabilities

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("shape", [(2, 16, 3, 4, 5), (1, 16, 1, 1, 1), (3, 16, 6, 6, 6)])
def test_attention_weights_sum_to_one_over_space(shape):
    torch.manual_seed(0)
    head = AttentionPoolHead(16, num_classes=3)
    feat = torch.randn(*shape) * 5
    w = head.attention_weights(feat)
    assert w.shape == (shape[0], 1, *shape[2:])
    assert bool((w >= 0).all())
    torch.testing.assert_close(w.flatten(1).sum(1), torch.ones(shape[0]), atol=1e-6, rtol=0)
    # pooled vector is the weighted mean of the feature vectors
    pooled = head.pool(feat)
    expected = torch.einsum("bcn,bn->bc", feat.flatten(2), w.flatten(1))
    torch.testing.assert_close(pooled, expected)


def test_attention_is_not_uniform_and_follows_features():
    torch.manual_seed(0)
    head = AttentionPoolHead(8, num_classes=2)
    feat = torch.zeros(1, 8, 2, 2, 2)
    feat[0, :, 1, 1, 1] = 3.0  # one distinct location
    with torch.no_grad():
        w = head.attention_weights(feat).flatten()
    others = w[:7]
    assert float(w[7]) != pytest.approx(float(others[0]))
    torch.testing.assert_close(others, others[0].expand(7))  # identical features get identical weights


def test_hidden_width_is_quarter_and_head_shapes():
    head = AttentionPoolHead(64, num_classes=5, task="multiclass")
    assert head.attention[0].out_channels == 16 and head.attention[2].out_channels == 1
    assert head.dropout.p == pytest.approx(0.1)
    feats = [torch.randn(2, 4, 8, 8, 8), torch.randn(2, 64, 2, 2, 2)]  # pyramid: deepest last is used
    assert head(feats).shape == (2, 5)
    assert AttentionPoolHead(64, task="binary")(feats[-1]).shape == (2, 1)
    assert AttentionPoolHead(64, num_classes=3, task="multilabel")(feats[-1]).shape == (2, 3)
    with pytest.raises(ValueError, match="task must be one of"):
        AttentionPoolHead(64, task="regression")


def test_probabilities_and_losses_per_task():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    torch.testing.assert_close(probabilities(logits, "multiclass").sum(1), torch.ones(1))
    assert bool(((probabilities(logits, "multilabel") > 0) & (probabilities(logits, "multilabel") < 1)).all())
    assert isinstance(loss_for_task("multiclass"), torch.nn.CrossEntropyLoss)
    assert isinstance(loss_for_task("binary"), torch.nn.BCEWithLogitsLoss)
    assert isinstance(loss_for_task("multilabel"), torch.nn.BCEWithLogitsLoss)


def test_frozen_probe_trains_only_the_head():
    torch.manual_seed(0)
    net = ProbeClassifier(build_encoder("tiny"), num_classes=3, task="multiclass", freeze_encoder=True)
    before = {k: v.clone() for k, v in net.encoder.state_dict().items()}
    net.train()
    assert not net.encoder.training and net.head.training
    assert not any(p.requires_grad for p in net.encoder.parameters())
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(2, 1, 32, 32, 32), torch.tensor([0, 2])
    for _ in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in net.encoder.parameters())
    for k, v in net.encoder.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_trainable_probe_updates_the_encoder():
    torch.manual_seed(0)
    net = ProbeClassifier(build_encoder("tiny"), num_classes=2, task="binary", freeze_encoder=False)
    before = [p.clone() for p in net.encoder.parameters()]
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        net(torch.randn(2, 1, 32, 32, 32)), torch.tensor([[0.0], [1.0]])
    )
    loss.backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, net.encoder.parameters()))
