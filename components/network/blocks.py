"""Convolutional building blocks of the MASS network (3D, pre-activation residual).

Attribute names (``conv``, ``conv1``, ``conv2``, ``shortcut``) follow the state-dict layout of
the authors' released checkpoints so that importing them needs no key renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-4  # the release's encoder/decoder instance norms; conformance depends on it


class NormActConv(nn.Module):
    """InstanceNorm (eps 1e-4) -> ReLU -> Conv3d (pre-activation order); conv has no bias.

    x[B, C_in, D, H, W] -> [B, C_out, D, H, W]
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm3d(in_ch, eps=NORM_EPS)
        self.act = nn.ReLU()
        self.conv = nn.Conv3d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.norm(x)))


class ResidualBlock(nn.Module):
    """Two pre-activation 3x3x3 convs plus a residual path.

    The residual path is the identity when the channel count is kept, otherwise a
    pre-activation 3x3x3 conv. x[B, C_in, ...] -> [B, C_out, ...]
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = NormActConv(in_ch, out_ch)
        self.conv2 = NormActConv(out_ch, out_ch)
        self.shortcut: nn.Module = NormActConv(in_ch, out_ch) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + self.shortcut(x)


class StemBlock(nn.Module):
    """Input stem: plain 3x3x3 conv (no bias) followed by one residual block.

    x[B, C_in, D, H, W] -> [B, C_out, D, H, W]
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, out_ch, 3, padding=1, bias=False)
        self.conv2 = ResidualBlock(out_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class DownStage(nn.Module):
    """Max-pool by 2, then ``num_blocks`` residual blocks. x[B, C_in, D, H, W] -> [B, C_out, D/2, H/2, W/2]"""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.MaxPool3d(2), ResidualBlock(in_ch, out_ch)]
        layers += [ResidualBlock(out_ch, out_ch) for _ in range(num_blocks - 1)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UpStage(nn.Module):
    """Trilinear up-sampling to the skip's grid, concat [skip, up], then residual blocks.

    x[B, C_in, d, h, w], skip[B, C_out, D, H, W] -> [B, C_out, D, H, W]
    """

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int = 2) -> None:
        super().__init__()
        layers = [ResidualBlock(in_ch + out_ch, out_ch)]
        layers += [ResidualBlock(out_ch, out_ch) for _ in range(num_blocks - 1)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # interpolate in float32: trilinear lacks bf16 kernels on some builds
        up = F.interpolate(x.float(), size=skip.shape[2:], mode="trilinear", align_corners=True).to(x.dtype)
        return self.conv(torch.cat([skip, up], dim=1))


class Encoder(nn.Module):
    """Residual 3D U-Net encoder.

    x[B, in_ch, D, H, W] -> list of 5 feature maps, SHALLOWEST FIRST, deepest LAST:
    ``[B, ch[0], D, H, W], [B, ch[1], D/2, ...], ..., [B, ch[4], D/16, H/16, W/16]``.
    ``out_channels`` lists their channel counts in the same order.
    """

    def __init__(
        self,
        in_ch: int = 1,
        channels: tuple[int, ...] = (32, 64, 128, 256, 512),
        num_blocks: tuple[int, ...] = (2, 2, 2, 2),
    ) -> None:
        super().__init__()
        if len(channels) != 5 or len(num_blocks) != 4:
            raise ValueError(f"Encoder needs 5 channel counts and 4 block counts, got {channels}, {num_blocks}")
        self.out_channels = [int(c) for c in channels]
        self.inc = StemBlock(in_ch, channels[0])
        self.down1 = DownStage(channels[0], channels[1], num_blocks[0])
        self.down2 = DownStage(channels[1], channels[2], num_blocks[1])
        self.down3 = DownStage(channels[2], channels[3], num_blocks[2])
        self.down4 = DownStage(channels[3], channels[4], num_blocks[3])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f0 = self.inc(x)
        f1 = self.down1(f0)
        f2 = self.down2(f1)
        f3 = self.down3(f2)
        f4 = self.down4(f3)
        return [f0, f1, f2, f3, f4]
