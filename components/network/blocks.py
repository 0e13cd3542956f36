"""Convolutional building blocks of the MASS network (3D, pre-activation residual).

Attribute names (``conv``, ``conv1``, ``conv2``, ``shortcut``) follow the state-dict layout of
the authors' released checkpoints so that importing them needs no key renaming.

CPU speed (profiled against the release, ``benchmarks/vs_release.py --profile True``):

* every 3x3x3 convolution runs on oneDNN (:class:`Conv3d`): PyTorch's own choice sends a float32 CPU
  input of batch 1 whose ``C*D*H <= 20480`` to its im2col kernel ``aten::slow_conv3d_forward``,
  9x slower at 16->16 channels on 32^3, 4x at 32->32 on 16^3 (one thread);
* a residual block that changes the channel count normalises its input once for both of its
  convolutions (the instance norms have no parameters, so both see the same activation), ReLUs
  and residual sums run in place;
* inference without autograd on CPU float32 keeps the U-Net's feature maps channels-last
  (``torch.channels_last_3d``, from the stem on): oneDNN then convolves without converting each input
  to its blocked layout and back (32->32 channels at 96^3: 0.43 -> 0.30 s, 2 threads). The instance
  norms of such maps are computed in two passes (mean, then the mean squared deviation), because
  PyTorch's channels-last norm kernels sum squares in float32 (rel. error 2e-4 on inputs of mean 30,
  0.03 for group norm). Switch off with ``torch.backends.mkldnn.flags(enabled=False)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-4  # the release's encoder/decoder instance norms; conformance depends on it


def _onednn_enabled() -> bool:
    """oneDNN is built in and not switched off (``torch.backends.mkldnn.flags``); TorchScript assumes it is."""
    if torch.jit.is_scripting():  # TorchScript compiles only this branch
        return True
    else:
        return torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled()


def channels_last_inference(x: torch.Tensor) -> bool:
    """Whether feature maps like ``x`` run channels-last: CPU float32 inference (no autograd) on oneDNN."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled() and _onednn_enabled()


def _instance_norm_relu_channels_last(x: torch.Tensor, eps: float, in_place: bool = False) -> torch.Tensor:
    """ReLU(InstanceNorm(x)) of a channels-last map, two-pass statistics, no autograd. Same layout out
    (``in_place``: overwrites and returns ``x``)."""
    dims = (2, 3, 4)
    mean = x.mean(dims, keepdim=True)
    centred = x.sub_(mean) if in_place else x - mean
    var = torch.zeros_like(centred[:, :, :1, :1, :1])
    for slab in centred.split(8, dim=2):  # squares in slabs: no second map-sized temporary
        var += slab.square().sum(dims, keepdim=True)
    var /= x.shape[2] * x.shape[3] * x.shape[4]
    return centred.mul_(torch.rsqrt(var.add_(eps))).relu_()


class Conv3d(nn.Conv3d):
    """Stride-1 ``nn.Conv3d`` (same parameters and state-dict keys) whose float32 CPU calls always run on oneDNN.

    Values agree with ``nn.Conv3d`` to float32 rounding; gradients flow as usual. Other devices and dtypes
    take ``nn.Conv3d``'s own path. Eager and TorchScript (model-zoo ``ckpt_export``) run the same kernels.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, padding: int = 0, bias: bool = True) -> None:
        super().__init__(in_ch, out_ch, kernel_size, padding=padding, bias=bias)
        self.same_padding = [int(padding)] * 3  # a list of ints, as the oneDNN op takes it (also in TorchScript)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32 and not x.is_mkldnn and _onednn_enabled():
            return torch.ops.aten.mkldnn_convolution(
                x, self.weight, self.bias, self.same_padding, [1, 1, 1], [1, 1, 1], 1
            )
        return self._conv_forward(x, self.weight, self.bias)


class NormActConv(nn.Module):
    """InstanceNorm (eps 1e-4) -> ReLU -> Conv3d (pre-activation order); conv has no bias.

    x[B, C_in, D, H, W] -> [B, C_out, D, H, W]
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm3d(in_ch, eps=NORM_EPS)
        self.act = nn.ReLU(inplace=True)  # on the norm's fresh output (its backward does not read it)
        self.conv = Conv3d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)

    def activate(self, x: torch.Tensor, consume: bool = False) -> torch.Tensor:
        """ReLU(InstanceNorm(x)), the input of ``conv``. ``consume``: the caller no longer needs ``x``, so a
        channels-last map without autograd is normalised in place."""
        if (
            channels_last_inference(x)
            and x.is_contiguous(memory_format=torch.channels_last_3d)
            and not x.is_contiguous()
        ):
            return _instance_norm_relu_channels_last(x, self.norm.eps, in_place=consume)
        return self.act(self.norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.activate(x))


class ResidualBlock(nn.Module):
    """Two pre-activation 3x3x3 convs plus a residual path.

    The residual path is the identity when the channel count is kept (``shortcut`` is None), otherwise a
    pre-activation 3x3x3 conv. Its norm and ReLU equal those of ``conv1`` (parameter-free instance norms
    of the same input), so that activation is computed once. x[B, C_in, ...] -> [B, C_out, ...]

    ``forward(x, consume=True)`` (an up-sampling stage's concatenation, which nothing else reads): without
    autograd that activation overwrites ``x`` instead of allocating a second map as wide as the input.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = NormActConv(in_ch, out_ch)
        self.conv2 = NormActConv(out_ch, out_ch)
        self.shortcut: NormActConv | None = NormActConv(in_ch, out_ch) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, consume: bool = False) -> torch.Tensor:
        shortcut = self.shortcut
        if shortcut is None:
            out = self.conv2(self.conv1(x))
            out += x  # conv output is a fresh tensor that its backward does not read
            return out
        a = self.conv1.activate(x, consume)
        skip = shortcut.conv(a)
        h = self.conv1.conv(a)
        del a  # the widest tensor of the block: free it before conv2 allocates
        out = self.conv2(h)
        out += skip
        return out


class StemBlock(nn.Module):
    """Input stem: plain 3x3x3 conv (no bias) followed by one residual block.

    x[B, C_in, D, H, W] -> [B, C_out, D, H, W]
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = Conv3d(in_ch, out_ch, 3, padding=1, bias=False)
        self.conv2 = ResidualBlock(out_ch, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not channels_last_inference(x):
            return self.conv2(self.conv1(x))
        # canonical channels-last strides: oneDNN's layout choice for a one-channel input follows the stride
        # of its size-1 channel dim, which differs between a volume and a sliding-window patch of it
        h = self.conv1(x.clone(memory_format=torch.channels_last_3d))
        return self.conv2(h.contiguous(memory_format=torch.channels_last_3d))


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
        x = torch.cat([skip, up], dim=1)
        del up  # freed before the blocks run: at full resolution the widest maps of the network
        for i, block in enumerate(self.conv):
            x = block(x, i == 0)  # the first block may normalise the concatenation in place
        return x


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
