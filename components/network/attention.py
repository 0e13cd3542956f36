"""Token attention blocks of the MASS network (pre-norm transformer pieces).

Tokens are ``[B, L, C]``. Attribute names (``norm``, ``norm1``, ``norm2``, ``fn``, ``mha``,
``fc1``, ``fc2``) mirror the released checkpoints' state-dict layout. Heads have 32 channels
each (at least one head).
"""

from __future__ import annotations

import torch
from torch import nn


def num_heads(dim: int, head_dim: int = 32) -> int:
    """Number of attention heads for a token width (32 channels a head, at least 1)."""
    heads = max(1, dim // head_dim)
    if dim % heads:
        raise ValueError(f"token width {dim} is not divisible into {heads} heads")
    return heads


class FeedForward(nn.Module):
    """Linear -> GELU -> Linear. x[..., C_in] -> [..., C_out]"""

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or in_dim
        out_dim = out_dim or in_dim
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MultiHead(nn.Module):
    """Multi-head attention of ``query`` over ``context`` (self-attention when context is query)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, num_heads(dim), batch_first=True)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.mha(query, context, context, need_weights=False)[0]


class NormedSelfAttention(nn.Module):
    """LayerNorm (eps 1e-4) then self-attention. x[B, L, C] -> [B, L, C] (residual added by caller)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-4)
        self.fn = MultiHead(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        return self.fn(y, y)


class NormedFeedForward(nn.Module):
    """LayerNorm (eps 1e-4) then a 4x-wide feed-forward. x[B, L, C] -> [B, L, C]"""

    def __init__(self, dim: int, expansion: int = 4) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-4)
        self.fn = FeedForward(dim, dim * expansion, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class NormedCrossAttention(nn.Module):
    """Separate LayerNorms on query and context, then cross-attention. -> [B, Lq, C]"""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fn = MultiHead(dim)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm1(query), self.norm2(context))


class TokenRefineBlock(nn.Module):
    """Task-encoding block: tokens self-attend, read the context, self-attend again.

    forward(context[B, N, C], tokens[B, T, C]) -> tokens[B, T, C]
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query_attn_block_1 = NormedSelfAttention(dim)
        self.query_ffn_1 = NormedFeedForward(dim)
        self.query_aggregate_block = NormedCrossAttention(dim)
        self.query_aggregate_ffn = NormedFeedForward(dim)
        self.query_attn_block_2 = NormedSelfAttention(dim)
        self.query_ffn_2 = NormedFeedForward(dim)

    def forward(self, context: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens + self.query_attn_block_1(tokens)
        t = t + self.query_ffn_1(t)
        t = t + self.query_aggregate_block(t, context)
        t = t + self.query_aggregate_ffn(t)
        t = t + self.query_attn_block_2(t)
        return t + self.query_ffn_2(t)


class TokenVoxelBlock(nn.Module):
    """Bidirectional token<->voxel block used in the decoder.

    Tokens read the voxels, voxels read the tokens, then tokens self-attend.
    forward(voxels[B, V, C], tokens[B, T, C]) -> (voxels[B, V, C], tokens[B, T, C])
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.prior_aggregate_block = NormedCrossAttention(dim)
        self.prior_ffn = NormedFeedForward(dim)
        self.feat_aggregate_block = NormedCrossAttention(dim)
        self.feat_ffn = NormedFeedForward(dim)
        self.prior_attn_block = NormedSelfAttention(dim)
        self.prior_ffn_2 = NormedFeedForward(dim)

    def forward(self, voxels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = tokens + self.prior_aggregate_block(tokens, voxels)
        t = t + self.prior_ffn(t)
        v = voxels + self.feat_aggregate_block(voxels, t)
        v = v + self.feat_ffn(v)
        t = t + self.prior_attn_block(t)
        t = t + self.prior_ffn_2(t)
        return v, t
