"""Task-conditioned U-Net decoder and dynamic-kernel head of the MASS network.

Before each of the 3 lowest-resolution decoder stages, the voxels of that stage and the task
tokens of all masks exchange information in 2 bidirectional attention blocks; the first token of
each mask leaving a stage is kept. The head turns those kept tokens (3 stages concatenated)
into one ``ch[0]``-wide kernel per mask and applies it to the full-resolution decoder features.
"""

from __future__ import annotations

import torch
from torch import nn

from components.network.attention import FeedForward, TokenVoxelBlock
from components.network.blocks import UpStage, channels_last_inference


class TokenVoxelFusion(nn.Module):
    """Attention blocks between one stage's voxels and all task tokens.

    forward(x[B, C, d, h, w], tokens[B, M, T, C]) -> (x[B, C, d, h, w], tokens[B, M, T, C])
    """

    def __init__(self, dim: int, num_blocks: int = 2) -> None:
        super().__init__()
        self.attn_layers = nn.ModuleList([TokenVoxelBlock(dim) for _ in range(num_blocks)])

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, d, h, w = x.shape
        _, m, t, _ = tokens.shape
        v = x.reshape(b, c, -1).transpose(1, 2)  # a view in either layout
        q = tokens.reshape(b, m * t, c)
        for layer in self.attn_layers:
            v, q = layer(v, q)
        if channels_last_inference(x):  # canonical channels-last strides, so up-sampling keeps the layout
            return v.reshape(b, d, h, w, c).permute(0, 4, 1, 2, 3), q.reshape(b, m, t, c)
        return v.transpose(1, 2).reshape(b, c, d, h, w), q.reshape(b, m, t, c)


class Decoder(nn.Module):
    """U-Net decoder with token fusion at the 3 deepest stages.

    forward(feats (5 maps, shallowest first), tokens (3 tensors [B, M, 11, C_s], deepest first))
    -> (features[B, ch[0], D, H, W], kept tokens: 3 tensors [B, M, C_s], deepest first)
    """

    def __init__(
        self,
        channels: tuple[int, ...] = (32, 64, 128, 256, 512),
        num_blocks: tuple[int, ...] = (2, 2, 2, 2),
        num_token_stages: int = 3,
    ) -> None:
        super().__init__()
        if num_token_stages != 3:
            raise ValueError("the MASS decoder fuses tokens at exactly the 3 deepest stages")
        ch = list(channels)
        self.num_token_stages = num_token_stages
        self.prior_fuse = nn.ModuleList([TokenVoxelFusion(ch[4 - i]) for i in range(num_token_stages)])
        self.up1 = UpStage(ch[4], ch[3], num_blocks[3])
        self.up2 = UpStage(ch[3], ch[2], num_blocks[2])
        self.up3 = UpStage(ch[2], ch[1], num_blocks[1])
        self.up4 = UpStage(ch[1], ch[0], num_blocks[0])

    def forward(self, feats: list[torch.Tensor], tokens: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # written out stage by stage so that torch.jit.script accepts it
        kept: list[torch.Tensor] = []
        x, t = self.prior_fuse[0](feats[4], tokens[0])
        kept.append(t[:, :, 0, :])
        x = self.up1(x, feats[3])
        x, t = self.prior_fuse[1](x, tokens[1])
        kept.append(t[:, :, 0, :])
        x = self.up2(x, feats[2])
        x, t = self.prior_fuse[2](x, tokens[2])
        kept.append(t[:, :, 0, :])
        x = self.up3(x, feats[1])
        return self.up4(x, feats[0]), kept


class DynamicKernelHead(nn.Module):
    """Kept tokens -> LayerNorm -> two MLPs -> kernel[B, M, ch0]; logits = kernel . features.

    forward(x[B, ch0, D, H, W], kept tokens list of [B, M, C_s]) -> logits[B, M, D, H, W]
    """

    def __init__(self, token_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(token_dim)
        self.classifier_pred = nn.Sequential(
            FeedForward(token_dim, token_dim, out_dim), FeedForward(out_dim, out_dim, out_dim)
        )
        for mod in self.classifier_pred.modules():
            if isinstance(mod, nn.Linear):
                nn.init.xavier_uniform_(mod.weight)
                nn.init.zeros_(mod.bias)

    def kernels(self, kept: list[torch.Tensor]) -> torch.Tensor:
        """Kept tokens (list of [B, M, C_s]) -> kernels[B, M, ch0]."""
        return self.classifier_pred(self.norm(torch.cat(kept, dim=2)))

    def forward(self, x: torch.Tensor, kept: list[torch.Tensor]) -> torch.Tensor:
        k = self.kernels(kept)
        b, c, d, h, w = x.shape
        out = torch.bmm(k, x.reshape(b, c, -1))  # a view in either layout (D, H, W stay adjacent)
        return out.reshape(b, k.shape[1], d, h, w)
