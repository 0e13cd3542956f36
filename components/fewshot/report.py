"""Few-shot report: read the sweep's runs back through the MLflow API, write Markdown + a PNG.

The main table has the shape of the paper's Table 1: one row per initialisation x mode
(``scratch / IC``, ``pretrained / FT`` ...), one column per number of shots, cells
``mean ± std`` of the class-mean Dice over seeds (in %; sample std, ddof=1; ``n`` seeds in brackets
when < all, and no ± for one seed).
Below it: the same for HD95 (mm), a per-class Dice table, excluded (absent) classes, failed runs.
The PNG plots mean Dice against shots with ± std error bars, one line per row.

Runs of different data settings (tag ``data_settings_sha256``: dataset, classes, split, preset,
spacing, window, modality) are never mixed: a sweep reports its own setting; the command line writes
one section (and one PNG, ``dice_vs_shots_<sha>.png``) per setting when the store holds several, or
only ``--data_settings`` when given.

Command line::

    python -m components.fewshot.report --tracking_uri sqlite:///demo_output/fewshot/mlruns.db \
        --out_dir demo_output/fewshot
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from components.io.atomic import atomic_write
from components.tracking.report import write_sections
from components.tracking.runs import latest_finished
from components.tracking.stats import cell, mean_std

__all__ = ["aggregate", "render_markdown", "plot_dice_vs_shots", "write_report"]

MODE_NAMES = {"ic": "IC", "ft": "FT"}


def aggregate(runs: list[dict[str, Any]], metric: str = "dice_mean") -> dict[tuple[str, str], dict[int, tuple]]:
    """``{(init, mode): {shots: (mean, std, n_seeds)}}`` over FINISHED runs (latest per run key)."""
    latest = latest_finished(runs)
    groups: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in latest.values():
        p = r["params"]
        groups[(p["init"], p["mode"])][int(p["shots"])].append(r["metrics"].get(metric, float("nan")))
    return {k: {s: mean_std(v) for s, v in sorted(d.items())} for k, d in sorted(groups.items())}


def _table(agg: dict, shots: list[int], scale: float, n_all: int, header: str) -> list[str]:
    lines = [f"| {header} | " + " | ".join(f"{s}-shot" for s in shots) + " |", "|---|" + "---|" * len(shots)]
    for (init, mode), by_shot in agg.items():
        row = f"{init} / {MODE_NAMES.get(mode, mode)}"
        lines.append(f"| {row} | " + " | ".join(cell(by_shot.get(s), scale, n_all) for s in shots) + " |")
    return lines


def render_markdown(runs: list[dict[str, Any]], experiment: str, tracking_uri: str, png_name: str | None) -> str:
    """The report text (see the module docstring)."""
    finished = [r for r in runs if r["status"] == "FINISHED"]
    shots = sorted({int(r["params"]["shots"]) for r in finished})
    seeds = sorted({int(r["params"]["seed"]) for r in finished})
    classes = sorted(
        {k[len("dice_") :] for r in finished for k in r["metrics"] if k.startswith("dice_") and k != "dice_mean"}
    )
    meta = finished[0]["params"] if finished else {}
    out = [
        f"# Few-shot segmentation report ({experiment})",
        "",
        f"Dataset `{meta.get('dataset', '?')}`, preset `{meta.get('preset', '?')}`, classes: "
        f"{meta.get('classes', ', '.join(classes))}. Spacing {meta.get('spacing', '?')}, window "
        f"{meta.get('roi_size', '?')}, split `{meta.get('split_file', '?')}` (sha256 {meta.get('split_sha256', '?')}). "
        f"Seeds: {seeds}. {len(finished)} finished runs read from MLflow `{tracking_uri}`.",
        "",
        "## Dice (%), class mean, mean ± sample std (ddof=1) over seeds",
        "",
    ]
    out += _table(aggregate(runs, "dice_mean"), shots, 100.0, len(seeds), "init / mode")
    out += ["", "## HD95 (mm), class mean, mean ± sample std (ddof=1) over seeds", ""]
    out += _table(aggregate(runs, "hd95_mean"), shots, 1.0, len(seeds), "init / mode")
    for s in shots:
        out += ["", f"## Dice (%) per class, {s}-shot", ""]
        out += ["| init / mode | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        per_class = {c: aggregate(runs, f"dice_{c}") for c in classes}
        rows = sorted({k for agg in per_class.values() for k in agg})
        for init, mode in rows:
            cells = [cell(per_class[c].get((init, mode), {}).get(s), 100.0, len(seeds)) for c in classes]
            out.append(f"| {init} / {MODE_NAMES.get(mode, mode)} | " + " | ".join(cells) + " |")
    excluded: dict[str, set[str]] = {}
    for r in finished:
        for img, names in json.loads(r["tags"].get("excluded", "{}") or "{}").items():
            excluded.setdefault(img, set()).update(names)
    out += ["", "## Classes absent from a test volume (excluded from its scores, not counted as 0 or 1)", ""]
    out += [f"- `{img}`: {', '.join(sorted(n))}" for img, n in sorted(excluded.items())] or ["- none"]
    failed = [r for r in runs if r["status"] == "FAILED"]
    if failed:
        out += ["", "## Failed runs", ""]
        out += [
            f"- `{r['tags'].get('run_key', r['run_id'])}`: {r['tags'].get('error', '?').splitlines()[0]}"
            for r in failed
        ]
    if png_name:
        out += ["", f"![Dice vs shots]({png_name})"]
    exp_id = runs[0].get("experiment_id", "<id>") if runs else "<id>"
    out += [
        "",
        f"Open the runs: `mlflow ui --backend-store-uri {tracking_uri}`, then "
        f"<http://127.0.0.1:5000/#/experiments/{exp_id}?workflowType=machine_learning> (the runs table, not the "
        "GenAI traces page). Columns to show: params `init`, `mode`, `shots`, `seed`, `dataset`; metrics "
        "`dice_mean`, `hd95_mean`, `seconds`. Filter numerically with `metrics.shots >= 5`.",
        "",
    ]
    return "\n".join(out)


def _plot_title(runs: list[dict[str, Any]]) -> str:
    """Dataset, classes, seeds and what the error bars are, for the plot's title."""
    finished = [r for r in runs if r["status"] == "FINISHED"]
    meta = finished[0]["params"] if finished else {}
    seeds = sorted({int(r["params"]["seed"]) for r in finished})
    classes = str(meta.get("classes", "?")).replace(",", ", ")
    bars = "error bars: sample std (ddof=1) over seeds" if len(seeds) > 1 else "one seed: no error bars"
    return (
        f"Few-shot segmentation, {meta.get('dataset', '?')} (preset {meta.get('preset', '?')})\n"
        f"classes: {classes}\nseeds {seeds}; {bars}"
    )


def plot_dice_vs_shots(runs: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """PNG: class-mean Dice (%) vs shots from 0 to 100, one line (with markers, so one shot value shows) per
    init x mode, ± sample std over seeds; the title names dataset, classes, seeds and the error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for (init, mode), by_shot in aggregate(runs, "dice_mean").items():
        xs = [s for s, st in by_shot.items() if st[2] > 0]
        ax.errorbar(
            xs,
            [by_shot[s][0] * 100 for s in xs],
            yerr=[by_shot[s][1] * 100 for s in xs],
            marker="o",
            capsize=3,
            label=f"{init} / {MODE_NAMES.get(mode, mode)}",
        )
    all_shots = sorted({s for by_shot in aggregate(runs, "dice_mean").values() for s in by_shot})
    if all_shots:
        ax.set_xticks(all_shots)
        ax.set_xlim(min(all_shots) - 0.5, max(all_shots) + 0.5)
    ax.set_xlabel("shots (labelled volumes)")
    ax.set_ylabel("class-mean Dice (%)")
    ax.set_ylim(0, 100)
    ax.set_title(_plot_title(runs), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def write_report(
    tracking_uri: str,
    experiment: str = "mass_fewshot",
    out_dir: str | os.PathLike = ".",
    data_settings: str | None = None,
) -> Path:
    """Write ``<out_dir>/report.md`` and its PNG(s); returns the Markdown path.

    ``data_settings``: report only the runs of that ``data_settings_sha256`` (a sweep's own); ``None``:
    every setting in the store, one section each.
    """
    return write_sections(
        tracking_uri, experiment, out_dir, data_settings, "dice_vs_shots", plot_dice_vs_shots, render_markdown
    )


def main(
    tracking_uri: str, out_dir: str = ".", experiment: str = "mass_fewshot", data_settings: str | None = None
) -> None:
    """Command-line entry: write the report and print its path."""
    print(f"Few-shot report: {write_report(tracking_uri, experiment, out_dir, data_settings)}")


if __name__ == "__main__":
    from components.checks.cli import fire_main

    fire_main(main)
