"""Picture of what an encoder has learnt: its features projected on their first 3 principal components.

``python scripts/feature_pca.py CKPT VOLUME OUT.png [--stage 1] [--spacing 3] [--modality mr]``

CKPT is a ``mass_pretrain`` checkpoint (``models/model.pt`` or a periodic checkpoint; EMA weights
preferred) or the release's container (``mass_base.pth``). The volume is loaded and normalised as
in pretraining, centre-cropped to the largest window the network takes, encoded; the features of
encoder stage ``--stage`` (0 = full resolution) are up-sampled to the window, reduced to their first
3 principal components over all voxels and shown as RGB in 3 orthogonal centre slices beside the
image. Anatomy emerging in the colours is visible before in-context Dice moves (paper §7.2).
"""

from __future__ import annotations

from pathlib import Path

import fire
import numpy as np
import torch
import torch.nn.functional as F

from components.data.intensity import ModalityNormalize
from components.data.loading import load_volume
from components.network.nets import DIVISOR
from components.network.release_checkpoint import network_from_release_checkpoint


def pca_rgb(features: torch.Tensor) -> np.ndarray:
    """features[C, X, Y, Z] -> RGB [X, Y, Z, 3] in [0, 1] from the first 3 principal components."""
    c = features.shape[0]
    flat = features.reshape(c, -1).T.double()
    flat = flat - flat.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(flat, full_matrices=False)
    k = min(3, v.shape[0])
    proj = flat @ v[:k].T
    if k < 3:
        proj = torch.cat([proj, torch.zeros(proj.shape[0], 3 - k, dtype=proj.dtype)], dim=1)
    lo, hi = proj.quantile(0.01, dim=0), proj.quantile(0.99, dim=0)
    rgb = ((proj - lo) / (hi - lo).clamp(min=1e-8)).clamp(0, 1)
    return rgb.T.reshape(3, *features.shape[1:]).permute(1, 2, 3, 0).float().numpy()


def main(ckpt: str, volume: str, out: str, stage: int = 1, spacing: float = 3.0, modality: str = "auto") -> str:
    """Write the PCA picture of ``volume`` through the encoder of ``ckpt`` to ``out``; returns its path."""
    net, _ = network_from_release_checkpoint(ckpt)
    return picture(net, volume, out, stage, spacing, modality, title=Path(ckpt).name)


def picture(
    net: torch.nn.Module,
    volume: str,
    out: str | Path,
    stage: int = 1,
    spacing: float = 3.0,
    modality: str = "auto",
    title: str = "",
) -> str:
    """The PCA picture of ``volume`` through ``net.encoder`` (a ``MASSNet``) -> PNG at ``out``."""
    was = net.training
    net.eval()
    image = ModalityNormalize(modality)(load_volume(volume, spacing=[spacing] * 3))
    img = torch.as_tensor(np.asarray(image), dtype=torch.float32)[0]
    size = [min(net.max_window, s // DIVISOR * DIVISOR) for s in img.shape]
    start = [(s - w) // 2 for s, w in zip(img.shape, size)]
    img = img[tuple(slice(a, a + w) for a, w in zip(start, size))]
    with torch.no_grad():
        feats = net.encoder(img[None, None])[int(stage)]
        feats = F.interpolate(feats, size=tuple(size), mode="trilinear", align_corners=False)[0]
    net.train(was)
    rgb = pca_rgb(feats)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centre = [s // 2 for s in size]
    cuts = [(lambda a, i=i: np.take(a, centre[i], axis=i)) for i in range(3)]
    fig, axes = plt.subplots(2, 3, figsize=(9, 6))
    for i, cut in enumerate(cuts):
        axes[0, i].imshow(np.rot90(cut(img.numpy())), cmap="gray")
        axes[1, i].imshow(np.rot90(cut(rgb)))
        for ax in axes[:, i]:
            ax.axis("off")
    fig.suptitle(f"{title}: encoder stage {stage} PCA (RGB = PC1-3) on {Path(volume).name}", fontsize=9)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out)
    return str(out)


if __name__ == "__main__":
    fire.Fire(main)
