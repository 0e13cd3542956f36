"""Mask-set quality against ground-truth labels (paper Table 4a).

Per ground-truth label: the best Dice of any mask, the mean Dice of the masks that overlap it, and
whether some mask reaches Dice >= ``threshold`` (0.4). Per volume: the mean best Dice, the share of
labels with a mask at Dice >= threshold, the mean Dice over all overlapping (mask, label) pairs and
the share of those pairs at Dice >= threshold.

Command line (``fire``; ``python -m components.maskgen.quality --help``)::

    python -m components.maskgen.quality --maskset out/colin27_t1.mset --label data/demo/colin27_seg.nii.gz \\
        [--names data/demo/labels.json] [--threshold 0.4] [--top 10] [--out quality.json]
    python -m components.maskgen.quality --masks_dir out --datalist data/demo/datalist.json --section mri

It prints one Markdown table per volume and writes the full results as JSON with ``--out``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from components.checks.errors import OptionError, VolumeError
from components.checks.options import check_int_at_least, check_range, read_json
from components.io.maskset import MaskSet
from components.io.naming import volume_stem

__all__ = ["dice_table", "quality_summary", "evaluate_maskset", "evaluate_dir", "format_table", "main"]


def dice_table(ms: MaskSet, label: np.ndarray, ids: Sequence[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """Dice of every mask with every label id, float64 ``(N_masks, N_labels)``.

    Args:
        ms: the mask set.
        label: integer label map ``(X, Y, Z)`` on the mask-set grid.
        ids: label ids to score (default: every positive id present).
    """
    label = np.asarray(label)
    if tuple(label.shape) != tuple(ms.shape):
        raise ValueError(f"{ms.path}: label grid {tuple(label.shape)} differs from the mask grid {ms.shape}")
    lab = np.rint(label).astype(np.int64)
    ids = [int(i) for i in (ids if ids is not None else np.unique(lab)) if int(i) > 0]
    lut = np.zeros(int(lab.max()) + 1 if lab.max() > 0 else 1, dtype=np.int64)
    for k, i in enumerate(ids, start=1):
        if i < lut.size:
            lut[i] = k
    dense = lut[np.clip(lab, 0, lut.size - 1)]
    gt_sizes = np.bincount(dense.ravel(), minlength=len(ids) + 1)[1:]
    out = np.zeros((len(ms), len(ids)))
    for m in range(len(ms)):
        bb, crop = ms.crop(m)
        inter = np.bincount(dense[bb[0] : bb[3], bb[1] : bb[4], bb[2] : bb[5]][crop], minlength=len(ids) + 1)[1:]
        denom = crop.sum() + gt_sizes
        out[m] = np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1), 0.0)
    return out, ids


def quality_summary(
    dice: np.ndarray, ids: Sequence[int], threshold: float = 0.4, names: dict[str, str] | None = None
) -> dict[str, Any]:
    """Summarise a ``dice_table`` (see module docstring for the numbers)."""
    per_label = []
    for k, i in enumerate(ids):
        col = dice[:, k] if dice.size else np.zeros(0)
        ov = col[col > 0]
        per_label.append(
            {
                "label": int(i),
                "name": (names or {}).get(str(i), str(i)),
                "best_dice": float(col.max()) if col.size else 0.0,
                "best_mask": int(col.argmax()) if col.size else -1,
                "n_overlapping": int(ov.size),
                "mean_dice_overlapping": float(ov.mean()) if ov.size else 0.0,
            }
        )
    pairs = dice[dice > 0]
    best = np.array([p["best_dice"] for p in per_label]) if per_label else np.zeros(0)
    return {
        "n_masks": int(dice.shape[0]),
        "n_labels": len(ids),
        "mean_best_dice": float(best.mean()) if best.size else 0.0,
        "share_labels_with_mask_at_threshold": float((best >= threshold).mean()) if best.size else 0.0,
        "mean_dice_overlapping": float(pairs.mean()) if pairs.size else 0.0,
        "share_overlapping_at_threshold": float((pairs >= threshold).mean()) if pairs.size else 0.0,
        "threshold": threshold,
        "per_label": per_label,
    }


def _load_label_ras(path: str | Path, ms: MaskSet | None = None) -> np.ndarray:
    """The label map on the RAS grid; :class:`VolumeError` naming it if unreadable, not integer, or
    (with ``ms``) not on the mask set's grid."""
    from monai.transforms import Orientation

    from components.data.loading import LoadVolumed, check_label_values

    lab: Any = Orientation(axcodes="RAS")(LoadVolumed("label")({"label": str(path)})["label"])  # bad file: VolumeError
    check_label_values(lab, str(path))
    if ms is not None and (
        tuple(lab.shape[1:]) != ms.shape or not np.allclose(np.asarray(lab.affine), ms.affine, atol=1e-3)
    ):
        raise VolumeError(
            path, f"label is not on the grid of {ms.path} (shape {list(lab.shape[1:])} vs {list(ms.shape)})"
        )
    return np.asarray(lab)[0]


def evaluate_maskset(
    maskset: str | Path, label: str | Path | np.ndarray, threshold: float = 0.4, names: dict[str, str] | None = None
) -> dict[str, Any]:
    """Quality of one mask-set file against a label file (reoriented to RAS) or a RAS label array."""
    ms = MaskSet.open(maskset)
    lab = _load_label_ras(label, ms) if not isinstance(label, np.ndarray) else label
    dice, ids = dice_table(ms, lab)
    out = quality_summary(dice, ids, threshold, names)
    out["maskset"] = str(maskset)
    return out


def evaluate_dir(
    masks_dir: str | Path,
    datalist: Sequence[dict],
    threshold: float = 0.4,
    names: dict[str, str] | None = None,
    suffix: str = ".mset",
) -> list[dict[str, Any]]:
    """Evaluate ``<masks_dir>/<image stem><suffix>`` for every datalist entry that has a ``label``."""
    res = []
    for item in datalist:
        if not item.get("label"):
            continue
        p = Path(masks_dir) / f"{volume_stem(item['image'])}{suffix}"
        if p.exists():
            res.append(evaluate_maskset(p, item["label"], threshold, names))
    return res


def format_table(res: dict[str, Any], top: int | None = None) -> str:
    """Markdown table of one volume's per-label numbers (sorted by best Dice)."""
    rows = sorted(res["per_label"], key=lambda r: -r["best_dice"])[:top]
    lines = [
        f"{res.get('maskset', '')}: {res['n_masks']} masks, {res['n_labels']} labels, "
        f"mean best Dice {res['mean_best_dice']:.3f}, labels with Dice>={res['threshold']}: "
        f"{100 * res['share_labels_with_mask_at_threshold']:.1f}%, mean Dice of overlapping masks "
        f"{res['mean_dice_overlapping']:.3f}",
        "| label | name | best Dice | overlapping masks | mean Dice (overlapping) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['label']} | {r['name']} | {r['best_dice']:.3f} | {r['n_overlapping']} | "
        f"{r['mean_dice_overlapping']:.3f} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(
    maskset: str | None = None,
    label: str | None = None,
    masks_dir: str | None = None,
    datalist: str | None = None,
    section: str | None = None,
    names: str | None = None,
    threshold: float = 0.4,
    top: int | None = None,
    out: str | None = None,
) -> list[dict[str, Any]]:
    """Score mask sets against label maps; prints a table per volume, returns (and with ``out`` writes) the results.

    Args:
        maskset: one mask-set file (with ``label``, its ground-truth label map).
        label: the label map of ``maskset``.
        masks_dir: folder of mask sets (with ``datalist``).
        datalist: datalist JSON / folder (see ``components.data.datalist.build_datalist``) with labels.
        section: datalist section (default: every entry).
        names: JSON file mapping label id -> name.
        threshold: Dice a mask must reach to count as found (paper: 0.4).
        top: print only the best ``top`` labels per volume.
        out: write the full results as JSON.
    """
    check_range("threshold", threshold, 0.0, 1.0)
    if top is not None:
        check_int_at_least("top", top, 1)
    label_names = read_json(names, "names file") if names else None
    if isinstance(label_names, dict):
        label_names = {str(k): (v if isinstance(v, str) else str(v)) for k, v in label_names.items()}
    if maskset and label:
        res = [evaluate_maskset(maskset, label, threshold, label_names)]
    elif masks_dir and datalist:
        from components.data.datalist import build_datalist

        res = evaluate_dir(masks_dir, build_datalist(datalist, section=section), threshold, label_names)
    else:
        raise OptionError("maskset", "give --maskset and --label, or --masks_dir and --datalist")
    for r in res:
        print(format_table(r, top))
        print()
    if out:
        Path(out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    from components.checks.cli import fire_main

    fire_main(main, serialize=lambda _: None)
