"""Attention-pooling classification head and the encoder + head probe model (paper §4.2, §6.4).

The head works on the deepest encoder feature map:
``feat[B,C,d,h,w] -> 1x1 conv C->C/4 -> ReLU -> 1x1 conv -> 1 -> softmax over d*h*w`` gives
attention weights ``a[B,1,d,h,w]`` (summing to 1 per sample); the pooled vector
``sum(a * feat) [B,C]`` goes through dropout (0.1) and a linear layer to ``logits[B,N]``.

Task types (``task``):
- ``"binary"``: N = 1 logit, sigmoid / BCE.
- ``"multiclass"``: N = number of classes, softmax / cross-entropy.
- ``"multilabel"``: N = number of labels, sigmoid / BCE per label.
"""

from __future__ import annotations

import torch
from torch import nn

TASKS = ("binary", "multiclass", "multilabel")

# a feature map or a pyramid (deepest last); a runtime alias (not Sequence) so that torch.jit.script can compile the head
Features = torch.Tensor | list[torch.Tensor]


def num_outputs(task: str, num_classes: int) -> int:
    """Number of logits for a task: 1 for binary, ``num_classes`` otherwise."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task == "binary":
        return 1
    if num_classes < 2 and task == "multiclass":
        raise ValueError(f"a multiclass task needs >= 2 classes, got {num_classes}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return num_classes


def deepest(features: Features) -> torch.Tensor:
    """The deepest map of an encoder pyramid (ordered shallow -> deep), or the tensor itself."""
    if isinstance(features, torch.Tensor):
        return features
    return features[-1]


class AttentionPoolHead(nn.Module):
    """Attention pooling over space + dropout + linear.

    Args:
        in_channels: C of the feature map.
        num_classes: number of classes / labels (ignored for ``task="binary"``).
        task: ``"binary"``, ``"multiclass"`` or ``"multilabel"``.
        dropout: dropout before the linear layer (0.1 as in the release).
        reduction: hidden width of the attention branch is ``max(1, C // reduction)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int = 2,
        task: str = "multiclass",
        dropout: float = 0.1,
        reduction: int = 4,
    ) -> None:
        super().__init__()
        self.task = task
        self.num_classes = num_classes
        hidden = max(1, in_channels // reduction)
        self.attention = nn.Sequential(
            nn.Conv3d(in_channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, 1, kernel_size=1),
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_outputs(task, num_classes))

    def attention_weights(self, feat: Features) -> torch.Tensor:
        """``feat[B,C,d,h,w]`` (or a pyramid) -> weights ``[B,1,d,h,w]``, each sample summing to 1."""
        x = deepest(feat)
        if x.ndim != 5:
            raise ValueError(f"expected a feature map [B,C,D,H,W], got shape {list(x.shape)}")
        score = self.attention(x)
        b = score.shape[0]
        return torch.softmax(score.reshape(b, -1), dim=1).reshape(score.shape)

    def pool(self, feat: Features) -> torch.Tensor:
        """Attention-weighted sum over space: ``[B,C,d,h,w] -> [B,C]``."""
        x = deepest(feat)
        w = self.attention_weights(x)
        return (x * w).flatten(2).sum(dim=2)

    def forward(self, feat: Features) -> torch.Tensor:
        """``feat[B,C,d,h,w]`` (or a pyramid, deepest last) -> ``logits[B,N]``."""
        return self.fc(self.dropout(self.pool(feat)))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``[B,N]`` -> probabilities ``[B,N]`` (softmax for multiclass, sigmoid otherwise)."""
        return probabilities(logits, self.task)


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """``logits[B,N] -> probs[B,N]``: softmax over classes for multiclass, sigmoid otherwise."""
    if task == "multiclass":
        return torch.softmax(logits, dim=1)
    return torch.sigmoid(logits)


def loss_for_task(task: str) -> nn.Module:
    """Cross-entropy (targets ``[B]`` long) for multiclass, BCE-with-logits (targets ``[B,N]`` float) else."""
    if task == "multiclass":
        return nn.CrossEntropyLoss()
    if task in ("binary", "multilabel"):
        return nn.BCEWithLogitsLoss()
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


class ProbeClassifier(nn.Module):
    """Encoder + attention-pooling head: ``image[B,1,D,H,W] -> logits[B,N]``.

    With ``freeze_encoder=True`` the encoder has ``requires_grad=False``, stays in eval mode
    even when the module is put in train mode, and runs under ``torch.no_grad()``.

    Args:
        encoder: module mapping an image to a feature pyramid (deepest last) or a single map.
        in_channels: channels of the deepest map (``encoder.out_channels[-1]`` when omitted).
        num_classes, task, dropout: as in :class:`AttentionPoolHead`.
        freeze_encoder: frozen probe (True) or full training (False).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int = 2,
        task: str = "multiclass",
        in_channels: int | None = None,
        dropout: float = 0.1,
        freeze_encoder: bool = True,
    ) -> None:
        super().__init__()
        if in_channels is None:
            chans = getattr(encoder, "out_channels", None)
            if not chans:
                raise ValueError("in_channels is required when the encoder has no out_channels")
            in_channels = int(chans[-1])
        self.encoder = encoder
        self.head = AttentionPoolHead(in_channels, num_classes=num_classes, task=task, dropout=dropout)
        self.task = task
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True) -> ProbeClassifier:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """``image[B,1,D,H,W] -> deepest feature map [B,C,d,h,w]``."""
        if self.freeze_encoder:
            with torch.no_grad():
                return deepest(self.encoder(image))
        return deepest(self.encoder(image))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image[B,1,D,H,W] -> logits[B,N]``."""
        return self.head(self.features(image))
