"""MASS in-context segmentation network and its sub-models.

* :class:`MASSNet` — full in-context model: ``encode_task(ref_image, ref_masks) -> TaskEmbedding``,
  ``segment(query, task) -> logits``, ``forward(query, ref_image, ref_masks)``.
* :class:`FixedClassNet` — encoder + decoder + head with N learnable class embeddings (no task
  encoder); initialise with :meth:`FixedClassNet.from_incontext`.
* ``MASSNet.encoder`` — the feature pyramid alone (shallowest first, deepest LAST).

Module names follow the authors' released state dicts, so their checkpoints load with an
identity key map (see :mod:`components.network.release_checkpoint`). Spatial sizes: every dimension a
multiple of 16 and at most ``max_window`` (128: size of the learnable positional embedding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from components.checks.errors import InputError, OptionError
from components.network.blocks import Encoder
from components.network.decoder import Decoder, DynamicKernelHead
from components.network.task_embedding import TaskEmbedding
from components.network.task_encoder import NUM_QUERY_TOKENS, TaskEncoderStage

PRESETS: dict[str, dict] = {
    # the paper / released mass_base configuration (120,126,373 values in the state dict)
    "paper": {"channels": (32, 64, 128, 256, 512), "num_blocks": (2, 2, 2, 2), "tn": 73, "max_window": 128},
    # the conformance checkpoint's configuration; fast enough on CPU at 64^3
    "small": {"channels": (8, 16, 32, 64, 128), "num_blocks": (2, 2, 2, 2), "tn": 73, "max_window": 128},
    # unit tests (smaller positional embedding -> windows up to 64^3)
    "tiny": {"channels": (4, 8, 16, 32, 64), "num_blocks": (1, 1, 1, 1), "tn": 4, "max_window": 64},
}

NUM_TOKEN_STAGES = 3
DIVISOR = 16


class SpatialSizeError(InputError):
    """Input grid not usable by the network (not a multiple of 16 or above the window limit)."""


def preset_config(preset: str = "small", **overrides) -> dict:
    """Configuration dict of a preset with overrides applied."""
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = dict(PRESETS[preset])
    unknown = set(overrides) - {"channels", "num_blocks", "tn", "max_window", "in_channels", "memory_efficient"}
    if unknown:
        raise TypeError(f"unknown network options {sorted(unknown)}")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def check_spatial(x: torch.Tensor, max_window: int, what: str = "input") -> None:
    """Raise :class:`SpatialSizeError` unless x[B, C, D, H, W] has dims divisible by 16 and <= max_window."""
    if x.dim() != 5:
        raise SpatialSizeError(f"{what} must be [B, C, D, H, W], got shape {tuple(x.shape)}")
    size = tuple(x.shape[-3:])
    if any(s % DIVISOR or s > max_window or s == 0 for s in size):
        raise SpatialSizeError(
            f"{what} spatial size {size}: each dim must be a positive multiple of "
            f"{DIVISOR} and <= {max_window} (use a sliding window for larger volumes)"
        )


class _SegmentationCore(nn.Module):
    """Encoder + token-conditioned decoder + dynamic-kernel head (shared by both models)."""

    __jit_unused_properties__ = ["token_channels", "memory_efficient"]  # keep torch.jit.script away

    def __init__(self, channels: Sequence[int], num_blocks: Sequence[int], in_channels: int, max_window: int) -> None:
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        self.num_blocks = tuple(int(n) for n in num_blocks)
        self.in_channels = int(in_channels)
        self.max_window = int(max_window)
        self.encoder = Encoder(in_channels, self.channels, self.num_blocks)
        self.decoder = Decoder(self.channels, self.num_blocks, NUM_TOKEN_STAGES)
        token_dim = sum(self.channels[4 - i] for i in range(NUM_TOKEN_STAGES))
        self.out = DynamicKernelHead(token_dim, self.channels[0])

    @property
    def token_channels(self) -> list[int]:
        """Token width of each task stage, deepest first."""
        return [self.channels[4 - i] for i in range(NUM_TOKEN_STAGES)]

    def decode(self, feats: list[torch.Tensor], tokens: list[torch.Tensor]) -> torch.Tensor:
        """Encoder features + tokens ([B, M, 11, C_s], deepest first) -> logits[B, M, D, H, W]."""
        x, kept = self.decoder(feats, tokens)
        return self.out(x, kept)


class MASSNet(_SegmentationCore):
    """In-context segmentation network (encoder, task encoder, decoder, dynamic head).

    ``task_prior_{0,1,2}`` buffers ``[tn, 11, C_s]`` are the release's fixed-class embeddings
    (kept so released state dicts map one-to-one; used by :meth:`class_embedding`).
    """

    def __init__(
        self,
        channels: Sequence[int] = (8, 16, 32, 64, 128),
        num_blocks: Sequence[int] = (2, 2, 2, 2),
        tn: int = 73,
        in_channels: int = 1,
        max_window: int = 128,
        memory_efficient: bool = True,
    ) -> None:
        super().__init__(channels, num_blocks, in_channels, max_window)
        self.tn = int(tn)
        for i, dim in enumerate(self.token_channels):
            self.register_buffer(f"task_prior_{i}", nn.init.xavier_uniform_(torch.zeros(tn, NUM_QUERY_TOKENS + 1, dim)))
        self.task_embedding = nn.ModuleList(
            [
                TaskEncoderStage(dim, 2 ** (4 - i), memory_efficient=memory_efficient, max_window=self.max_window)
                for i, dim in enumerate(self.token_channels)
            ]
        )

    @property
    def memory_efficient(self) -> bool:
        return all(stage.memory_efficient for stage in self.task_embedding)

    @memory_efficient.setter
    def memory_efficient(self, value: bool) -> None:
        for stage in self.task_embedding:
            cast(TaskEncoderStage, stage).memory_efficient = bool(value)

    def encode_task(
        self, ref_image: torch.Tensor, ref_masks: torch.Tensor, names: Sequence[str] | None = None
    ) -> TaskEmbedding:
        """ref_image[B, 1, D, H, W] + ref_masks[B, M, D, H, W] in {0, 1} -> TaskEmbedding ([B, M, 11, C_s])."""
        check_spatial(ref_image, self.max_window, "reference image")
        if (
            ref_masks.dim() != 5
            or ref_masks.shape[0] != ref_image.shape[0]
            or ref_masks.shape[2:] != ref_image.shape[2:]
        ):
            raise SpatialSizeError(
                f"reference masks {tuple(ref_masks.shape)} must be [B, M, D, H, W] on the "
                f"reference image grid {tuple(ref_image.shape)}"
            )
        return TaskEmbedding(self.task_tokens(ref_image, ref_masks), names)

    def task_tokens(self, ref_image: torch.Tensor, ref_masks: torch.Tensor) -> list[torch.Tensor]:
        """Unchecked task encoding: tokens [B, M, 11, C_s] per stage, deepest first (TorchScript-able)."""
        feats = self.encoder(ref_image)
        masks = ref_masks.to(feats[0].dtype)
        return [stage(feats[4 - i], masks) for i, stage in enumerate(self.task_embedding)]

    def segment(self, query: torch.Tensor, task: TaskEmbedding) -> torch.Tensor:
        """query[B, 1, D, H, W] + task (B or 1 references) -> logits[B, M, D, H, W]."""
        check_spatial(query, self.max_window, "query image")
        if task.channels != self.token_channels:
            raise ValueError(f"task embedding widths {task.channels} do not fit this network {self.token_channels}")
        tokens = [t.to(device=query.device, dtype=query.dtype) for t in task.expand_batch(query.shape[0])]
        return self.decode(self.encoder(query), tokens)

    def forward(self, query: torch.Tensor, ref_image: torch.Tensor, ref_masks: torch.Tensor) -> torch.Tensor:
        """query[B, 1, ...], ref_image[B, 1, ...], ref_masks[B, M, ...] -> logits[B, M, D, H, W]."""
        if not torch.jit.is_scripting():  # eager: shapes checked, TaskEmbedding
            return self.segment(query, self.encode_task(ref_image, ref_masks))
        # TorchScript (model-zoo ckpt_export): the same computation without the Python-only checks
        return self.decode(self.encoder(query), self.task_tokens(ref_image, ref_masks))

    def class_embedding(self, class_ids: Sequence[int]) -> TaskEmbedding:
        """TaskEmbedding (B=1) read from the ``task_prior_*`` buffers for the given class ids."""
        idx = torch.as_tensor(list(class_ids), dtype=torch.long)
        return TaskEmbedding([getattr(self, f"task_prior_{i}")[idx].unsqueeze(0) for i in range(NUM_TOKEN_STAGES)])


class FixedClassNet(_SegmentationCore):
    """Segmentation with a fixed set of ``num_classes`` classes: image[B, 1, D, H, W] -> logits[B, N, D, H, W].

    Class embeddings are the learnable parameters ``task_prior_{0,1,2}`` ``[N, 11, C_s]``
    (named as the release's fixed-class buffers). No task encoder.
    """

    if TYPE_CHECKING:  # registered in __init__; for mypy only (torch.jit.script cannot read string annotations)
        task_prior_0: torch.Tensor
        task_prior_1: torch.Tensor
        task_prior_2: torch.Tensor

    def __init__(
        self,
        preset: str = "small",
        num_classes: int = 1,
        channels: Sequence[int] | None = None,
        num_blocks: Sequence[int] | None = None,
        in_channels: int = 1,
        max_window: int | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        cfg = preset_config(preset, channels=channels, num_blocks=num_blocks, max_window=max_window)
        super().__init__(cfg["channels"], cfg["num_blocks"], in_channels, cfg["max_window"])
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names is not None else None
        for i, dim in enumerate(self.token_channels):
            self.register_parameter(
                f"task_prior_{i}",
                nn.Parameter(nn.init.xavier_uniform_(torch.zeros(num_classes, NUM_QUERY_TOKENS + 1, dim))),
            )

    def class_tokens(self) -> list[torch.Tensor]:
        """Class embeddings per stage, deepest first: [N, 11, C_s]."""
        return [cast(torch.Tensor, getattr(self, f"task_prior_{i}")) for i in range(NUM_TOKEN_STAGES)]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b = image.shape[0]
        # the three stages spelled out (not class_tokens()): torch.jit.script compiles this (model-zoo ckpt_export)
        priors = [self.task_prior_0, self.task_prior_1, self.task_prior_2]
        tokens = [t.unsqueeze(0).expand(b, -1, -1, -1) for t in priors]
        return self.decode(self.encoder(image), tokens)

    def set_class_embedding(self, task: TaskEmbedding) -> None:
        """Copy a task embedding (averaged over its B references) into the class embeddings."""
        task = task.mean_over_references()
        if task.num_masks != self.num_classes or task.channels != self.token_channels:
            raise ValueError(f"{task!r} does not fit {self.num_classes} classes of widths {self.token_channels}")
        with torch.no_grad():
            for p, t in zip(self.class_tokens(), task.tokens):
                p.copy_(t[0].to(p.dtype))
        if task.names is not None:
            self.class_names = list(task.names)

    def as_task_embedding(self) -> TaskEmbedding:
        """Current class embeddings as a TaskEmbedding (B=1)."""
        return TaskEmbedding([t.detach().unsqueeze(0) for t in self.class_tokens()], self.class_names)

    @classmethod
    def from_incontext(cls, net: MASSNet, task: TaskEmbedding) -> FixedClassNet:
        """Copy encoder/decoder/head of ``net`` and take the class embeddings from ``task``."""
        model = cls(
            num_classes=task.num_masks,
            channels=net.channels,
            num_blocks=net.num_blocks,
            in_channels=net.in_channels,
            max_window=net.max_window,
        )
        core = {k: v for k, v in net.state_dict().items() if k.split(".")[0] in ("encoder", "decoder", "out")}
        model.load_state_dict(core, strict=False)
        model.set_class_embedding(task)
        return model.to(next(net.parameters()).device)


def build_network(preset: str = "small", **overrides) -> MASSNet:
    """MASSNet for a preset ("paper", "small", "tiny"); overrides: channels, num_blocks, tn, max_window,
    in_channels, memory_efficient."""
    return MASSNet(**preset_config(preset, **overrides))


def check_preset(option: str, preset: Any) -> dict:
    """The network configuration of ``preset``; ``OptionError`` listing the known ones otherwise."""
    if preset not in PRESETS:
        raise OptionError(option, f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[preset])


def check_crop_size(option: str, crop: Any, preset: str) -> tuple[int, ...]:
    """Crop size valid for ``preset``: 3 positive multiples of 16, each <= the preset's ``max_window``."""
    cfg = check_preset("preset", preset)
    try:
        size = tuple(int(c) for c in (crop if isinstance(crop, Sequence) and not isinstance(crop, str) else [crop]))
    except (TypeError, ValueError):
        raise OptionError(option, f"must be 3 whole numbers, got {crop!r}") from None
    if len(size) != 3 or any(s <= 0 or s % DIVISOR or s > cfg["max_window"] for s in size):
        raise OptionError(
            option,
            f"{list(size)} does not fit preset {preset!r}: 3 multiples of {DIVISOR}, each <= {cfg['max_window']}",
        )
    return size
