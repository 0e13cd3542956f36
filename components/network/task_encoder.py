"""Task encoding: reference features + binary masks -> 11 task tokens per mask and stage.

For one stage with features ``f[B, C, d, h, w]`` (grid ``s`` times coarser than the image) and
masks ``m[B, M, D, H, W]`` (``D = s*d`` ...):

* foreground token: mean of the trilinearly up-sampled ``f`` inside each mask;
* context stream: ``f`` -> norm/ReLU/1x1 conv to ``s^3`` channels -> pixel shuffle to one
  full-resolution channel -> fused with the mask by a 3x3x3 conv -> + learnable positional
  embedding (128^3, hence windows <= 128^3) -> pixel unshuffle -> 1x1 conv back to ``C`` channels
  -> + ``f``; flattened to ``d*h*w`` context tokens per mask;
* 10 learnable query tokens + the foreground token are refined by attention blocks that read the
  context tokens. Output ``tokens[B, M, 11, C]`` (queries first, foreground token last).

``memory_efficient=True`` computes the same numbers without the large intermediates: the
foreground mean pools each mask onto the feature grid with the transpose of the trilinear
up-sampling (exactly the same weighted sum), and the image half of the mask-fusion conv is
computed once per image instead of once per mask (instance norm is per channel, so the fused
conv splits into an image term plus a mask term).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from components.network.attention import TokenRefineBlock

MAX_WINDOW = 128
NUM_QUERY_TOKENS = 10


def pixel_shuffle_3d(x: torch.Tensor, s: int) -> torch.Tensor:
    """[B, C*s^3, d, h, w] -> [B, C, d*s, h*s, w*s]; channel (c, i, j, k) goes to offset (i, j, k)."""
    b, c, d, h, w = x.shape
    c_out = c // (s * s * s)
    x = x.reshape(b, c_out, s, s, s, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c_out, d * s, h * s, w * s)


def pixel_unshuffle_3d(x: torch.Tensor, s: int) -> torch.Tensor:
    """Inverse of :func:`pixel_shuffle_3d`: [B, C, d*s, h*s, w*s] -> [B, C*s^3, d, h, w]."""
    b, c, dd, hh, ww = x.shape
    d, h, w = dd // s, hh // s, ww // s
    x = x.reshape(b, c, d, s, h, s, w, s).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * s * s * s, d, h, w)


def conv3d_one_channel(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """3x3x3 zero-padded convolution of single-channel volumes: x[N, 1, D, H, W], weight[1, 1, 3, 3, 3] -> [N, 1, D, H, W].

    27 multiply-adds of shifted copies: on the flattened padded volume a shift by (a, b, c) is a constant
    offset, so every tap reads one contiguous run. Same values as ``F.conv3d`` to float32 rounding (the taps
    are summed in another order) and differentiable; on CPU about 3x faster than oneDNN and 2x faster than
    ``slow_conv3d`` for one channel, where both kernels vectorise poorly. No bias. The result is a
    non-contiguous view.
    """
    n, _, d, h, w = x.shape
    hp, wp = h + 2, w + 2
    padded = F.pad(x, (1, 1, 1, 1, 1, 1)).reshape(n, (d + 2) * hp * wp)
    length = padded.shape[1] - (2 * hp * wp + 2 * wp + 2)  # outputs whose every tap lies inside the volume
    acc = torch.zeros_like(padded)
    run = acc[:, :length]
    taps = weight.reshape(27)
    for a in range(3):
        for b in range(3):
            for c in range(3):
                off = (a * hp + b) * wp + c
                run.addcmul_(padded[:, off : off + length], taps[(a * 3 + b) * 3 + c])
    return acc.reshape(n, 1, d + 2, hp, wp)[:, :, :d, :h, :w]


def _linear_upsample_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """Matrix A[n_out, n_in] of 1-D linear interpolation (align_corners=True), as F.interpolate does."""
    eye = torch.eye(n_in, dtype=like.dtype, device=like.device).unsqueeze(1)  # [n_in, 1, n_in]
    cols = F.interpolate(eye, size=n_out, mode="linear", align_corners=True)  # [n_in, 1, n_out]
    return cols[:, 0, :].transpose(0, 1)


def pool_masks_to_grid(masks: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Adjoint of trilinear up-sampling: masks[B, M, D, H, W] -> weights[B, M, d, h, w].

    ``sum(up(f) * m) == sum(f * pool_masks_to_grid(m))`` for any ``f`` on the coarse grid.
    """
    d, h, w = grid
    dd, hh, ww = masks.shape[-3:]
    ad = _linear_upsample_matrix(d, dd, masks)
    ah = _linear_upsample_matrix(h, hh, masks)
    aw = _linear_upsample_matrix(w, ww, masks)
    return torch.einsum("bmxyz,xi,yj,zk->bmijk", masks, ad, ah, aw)


def _masked_feature_sum(feat: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """float32 sum of up-sampled features inside each mask: feat[B, C, d, h, w], masks[B, M, ...] -> [B, M, C]."""
    b, c = feat.shape[0], feat.shape[1]
    m = masks.shape[1]
    weights = pool_masks_to_grid(masks.float(), (feat.shape[2], feat.shape[3], feat.shape[4]))
    return torch.bmm(weights.reshape(b, m, -1), feat.float().reshape(b, c, -1).transpose(1, 2))


class PositionalEmbedding3D(nn.Module):
    """Learnable additive embedding[1, C, 128, 128, 128], cropped to the input's grid."""

    def __init__(self, channels: int, size: int = MAX_WINDOW) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(1, channels, size, size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d, h, w = x.shape[-3:]
        return x + self.embedding[:, :, :d, :h, :w]


class TaskEncoderStage(nn.Module):
    """Task encoding for one feature stage.

    forward(feat[B, C, d, h, w], masks[B, M, d*s, h*s, w*s]) -> tokens[B, M, 11, C]
    """

    def __init__(
        self, dim: int, scale: int, num_blocks: int = 2, memory_efficient: bool = True, max_window: int = MAX_WINDOW
    ) -> None:
        super().__init__()
        self.scale = scale
        self.memory_efficient = memory_efficient
        expanded = scale**3
        self.task_query = nn.Parameter(nn.init.xavier_uniform_(torch.zeros(NUM_QUERY_TOKENS, dim)))
        self.attn_layers = nn.ModuleList([TokenRefineBlock(dim) for _ in range(num_blocks)])
        self.norm_foreground = nn.LayerNorm(dim)
        self.norm_query = nn.LayerNorm(dim)
        self.norm_combined = nn.LayerNorm(dim)
        self.norm_post = nn.LayerNorm(dim)
        self.expand = nn.Sequential(nn.InstanceNorm3d(dim), nn.ReLU(), nn.Conv3d(dim, expanded, 1))
        self.merge = nn.Sequential(nn.InstanceNorm3d(2), nn.ReLU(), nn.Conv3d(2, 1, 3, padding=1))
        self.squeeze = nn.Sequential(nn.InstanceNorm3d(expanded), nn.ReLU(), nn.Conv3d(expanded, dim, 1))
        self.pos_embed = PositionalEmbedding3D(1, max_window)

    # -- foreground token -------------------------------------------------------------------
    def foreground_tokens(self, feat: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Mean feature inside each mask: feat[B, C, d, h, w], masks[B, M, D, H, W] -> [B, M, C]."""
        b, c = feat.shape[:2]
        m = masks.shape[1]
        if self.memory_efficient:
            # float32 even under autocast: the pooled weights sum many voxels
            dev = feat.device.type
            if torch.jit.is_scripting():  # TorchScript (model-zoo ckpt_export) has no autocast context here
                total = _masked_feature_sum(feat, masks)
            else:
                with torch.autocast(dev, enabled=False) if dev in ("cpu", "cuda") else contextlib.nullcontext():
                    total = _masked_feature_sum(feat, masks)
            total = total.to(feat.dtype)
        else:
            up = F.interpolate(feat, size=masks.shape[-3:], mode="trilinear", align_corners=True)
            total = torch.bmm(masks.to(up.dtype).reshape(b, m, -1), up.reshape(b, c, -1).transpose(1, 2))
        area = masks.sum(dim=(2, 3, 4)).clamp(min=1).unsqueeze(-1)
        return total / area

    # -- context tokens ---------------------------------------------------------------------
    def context_tokens(self, feat: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Mask-fused context: feat[B, C, d, h, w], masks[B, M, D, H, W] -> [B*M, d*h*w, C]."""
        b, c = feat.shape[:2]
        m = masks.shape[1]
        full = pixel_shuffle_3d(self.expand(feat), self.scale)  # [B, 1, D, H, W]
        masks = masks.to(full.dtype)
        dd, hh, ww = masks.shape[2], masks.shape[3], masks.shape[4]
        if self.memory_efficient:
            # norm and ReLU act per channel, so conv([img, mask]) = conv_img(img) + conv_mask(mask)
            # (indexing and explicit sizes instead of typing.cast and *shape: torch.jit.script compiles this;
            # and no mypy ignore comments, TorchScript parses those). img_term [B, 1, ...], mask_term [B*M, 1, ...]
            weight, bias = self.merge[2].weight, self.merge[2].bias
            assert isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor)  # (for mypy)
            act_img = self.merge[1](F.instance_norm(full))
            act_mask = self.merge[1](F.instance_norm(masks.reshape(b * m, 1, dd, hh, ww)))
            if full.device.type == "cpu":
                img_term = conv3d_one_channel(act_img, weight[:, :1]) + bias.reshape(1, 1, 1, 1, 1)
                mask_term = conv3d_one_channel(act_mask, weight[:, 1:])
            else:
                img_term = F.conv3d(act_img, weight[:, :1], bias, padding=1)
                mask_term = F.conv3d(act_mask, weight[:, 1:], None, padding=1)
            fused = (mask_term.reshape(b, m, dd, hh, ww) + img_term).reshape(b * m, 1, dd, hh, ww)
        else:
            full_rep = full.unsqueeze(1).expand(-1, m, -1, -1, -1, -1).reshape(b * m, 1, dd, hh, ww)
            mask_rep = masks.reshape(b * m, 1, dd, hh, ww)
            fused = self.merge(torch.cat([full_rep, mask_rep], dim=1))
        fused = pixel_unshuffle_3d(self.pos_embed(fused), self.scale)  # [B*M, s^3, d, h, w]
        ctx = self.squeeze(fused).reshape(b, m, c, -1) + feat.reshape(b, 1, c, -1)
        return ctx.reshape(b * m, c, -1).transpose(1, 2)

    def forward(self, feat: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        b, c = feat.shape[:2]
        m = masks.shape[1]
        fg = self.norm_foreground(self.foreground_tokens(feat, masks).reshape(b * m, 1, c))
        ctx = self.context_tokens(feat, masks)
        queries = self.norm_query(self.task_query).unsqueeze(0).expand(b * m, -1, -1)
        tokens = self.norm_combined(torch.cat([queries, fg], dim=1))
        for layer in self.attn_layers:
            tokens = layer(ctx, tokens)
        tokens = self.norm_post(tokens)
        return tokens.reshape(b, m, -1, c)  # 11 = NUM_QUERY_TOKENS + 1 tokens per mask
