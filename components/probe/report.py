"""Probe report: the probe sweep's runs read back through the MLflow API, written as Markdown + a PNG.

The main table has the shape of the paper's Table 3: one row per run (``pretrained_frozen``,
``random_frozen``, ``scratch_full`` ...), one column per fraction of the training rows, cells
``mean ± std`` of the test split's mean ROC AUC over seeds (sample std, ddof=1; ``(n=k)`` when fewer
seeds than the sweep's, no ± for one seed). Below it: AUC per class for each fraction, the validation
AUC that chose each head, failed runs. The PNG plots test AUC against the fraction (0 to 1, chance
0.5 dashed), one line per run, ± std over seeds.

Runs of different data settings (tag ``data_settings_sha256``) are never mixed: a sweep reports its
own; the command line writes one section (and one ``auc_vs_fraction_<sha>.png``) per setting::

    python -m components.probe.report --tracking_uri sqlite:///demo_output/probe/mlruns.db \
        --out_dir demo_output/probe
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from components.io.atomic import atomic_write
from components.tracking.report import write_sections
from components.tracking.runs import latest_finished
from components.tracking.stats import cell, mean_std

__all__ = ["aggregate", "render_markdown", "plot_auc_vs_fraction", "write_report"]

Stat = tuple[float, float, int]


def aggregate(runs: list[dict[str, Any]], metric: str = "test_mean_auc") -> dict[str, dict[float, Stat]]:
    """``{run: {fraction: (mean, std, n_seeds)}}`` of ``metric`` over the newest FINISHED run of each key."""
    groups: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in latest_finished(runs).values():
        p = r["params"]
        groups[p["run"]][float(p["fraction"])].append(r["metrics"].get(metric, float("nan")))
    return {k: {f: mean_std(v) for f, v in sorted(d.items())} for k, d in sorted(groups.items())}


def _meta(runs: list[dict[str, Any]]) -> tuple[dict[str, str], list[float], list[int]]:
    finished = list(latest_finished(runs).values())
    meta = finished[0]["params"] if finished else {}
    fractions = sorted({float(r["params"]["fraction"]) for r in finished})
    seeds = sorted({int(r["params"]["seed"]) for r in finished})
    return meta, fractions, seeds


def _table(agg: dict[str, dict[float, Stat]], fractions: list[float], n_all: int) -> list[str]:
    lines = ["| run | " + " | ".join(f"{f:g} of the rows" for f in fractions) + " |", "|---|" + "---|" * len(fractions)]
    for run, by_fraction in agg.items():
        lines.append(f"| {run} | " + " | ".join(cell(by_fraction.get(f), 1.0, n_all, 3) for f in fractions) + " |")
    return lines


def render_markdown(runs: list[dict[str, Any]], experiment: str, tracking_uri: str, png_name: str | None) -> str:
    """The report text (see the module docstring)."""
    meta, fractions, seeds = _meta(runs)
    classes = [c for c in str(meta.get("classes", "")).split(",") if c]
    split = {r["tags"].get("eval_split", "test") for r in latest_finished(runs).values()}
    scored = "test" if split == {"test"} else "/".join(sorted(split))
    out = [
        f"# Frozen-encoder probe report ({experiment})",
        "",
        f"Dataset `{meta.get('dataset', '?')}`, {meta.get('task', '?')} task, classes: {', '.join(classes) or '?'}. "
        f"Preset `{meta.get('preset', '?')}`, spacing {meta.get('spacing', '?')}, window {meta.get('spatial_size', '?')}, "
        f"datalist `{meta.get('datalist', '?')}` (sha256 {meta.get('datalist_sha256', '?')}). Seeds: {seeds}. "
        f"{len(latest_finished(runs))} finished runs read from MLflow `{tracking_uri}`. Each head is the one with "
        f"the best validation mean AUC; the scores below are on the {scored} split.",
        "",
        f"## {scored.capitalize()} ROC AUC, class mean, mean ± sample std (ddof=1) over seeds",
        "",
    ]
    out += _table(aggregate(runs), fractions, len(seeds))
    for f in fractions:
        out += ["", f"## {scored.capitalize()} ROC AUC per class, fraction {f:g}", ""]
        out += ["| run | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
        per_class = {c: aggregate(runs, f"test_auc_{c}") for c in classes}
        for run in sorted({k for agg in per_class.values() for k in agg}):
            cells = [cell(per_class[c].get(run, {}).get(f), 1.0, len(seeds), 3) for c in classes]
            out.append(f"| {run} | " + " | ".join(cells) + " |")
    out += ["", "## Validation mean ROC AUC of the chosen heads", ""]
    out += _table(aggregate(runs, "best_val_mean_auc"), fractions, len(seeds))
    failed = [r for r in runs if r["status"] == "FAILED"]
    if failed:
        out += ["", "## Failed runs", ""]
        out += [
            f"- `{r['tags'].get('run_key', r['run_id'])}`: {r['tags'].get('error', '?').splitlines()[0]}"
            for r in failed
        ]
    if png_name:
        out += ["", f"![AUC vs fraction]({png_name})"]
    exp_id = runs[0].get("experiment_id", "<id>") if runs else "<id>"
    out += [
        "",
        f"Open the runs: `mlflow ui --backend-store-uri {tracking_uri}`, then "
        f"<http://127.0.0.1:5000/#/experiments/{exp_id}?workflowType=machine_learning> (the runs table, not the "
        "GenAI traces page). Columns to show: params `run`, `fraction`, `seed`, `dataset`; metrics "
        "`test_mean_auc`, `best_val_mean_auc`, `train_rows`, `seconds`. Filter numerically with "
        "`metrics.fraction <= 0.3`; a run's `val_mean_auc` chart is its validation curve per epoch.",
        "",
    ]
    return "\n".join(out)


def plot_auc_vs_fraction(runs: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """PNG: test mean AUC (0-1, chance 0.5 dashed) vs fraction of training rows, one line with markers per
    run, ± sample std over seeds; the title names dataset, classes, seeds and the error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta, fractions, seeds = _meta(runs)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for run, by_fraction in aggregate(runs).items():
        xs = [f for f, st in by_fraction.items() if st[2] > 0]
        ax.errorbar(
            xs,
            [by_fraction[f][0] for f in xs],
            yerr=[0.0 if by_fraction[f][2] < 2 else by_fraction[f][1] for f in xs],
            marker="o",
            capsize=3,
            label=run,
        )
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlim(0.0, 1.05)
    if fractions:
        ax.set_xticks(fractions)
    ax.set_xlabel("fraction of the training rows")
    ax.set_ylabel("test ROC AUC, class mean")
    bars = "error bars: sample std (ddof=1) over seeds" if len(seeds) > 1 else "one seed: no error bars"
    classes = str(meta.get("classes", "?")).replace(",", ", ")
    ax.set_title(
        f"Frozen-encoder probe, {meta.get('dataset', '?')} (preset {meta.get('preset', '?')})\n"
        f"classes: {classes}\nseeds {seeds}; {bars}",
        fontsize=8,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)
    return path


def write_report(
    tracking_uri: str,
    experiment: str = "mass_probe",
    out_dir: str | os.PathLike = ".",
    data_settings: str | None = None,
) -> Path:
    """Write ``<out_dir>/report.md`` and its PNG(s); returns the Markdown path (``data_settings``: only
    that ``data_settings_sha256``; ``None``: every setting in the store, one section each)."""
    return write_sections(
        tracking_uri, experiment, out_dir, data_settings, "auc_vs_fraction", plot_auc_vs_fraction, render_markdown
    )


def main(
    tracking_uri: str, out_dir: str = ".", experiment: str = "mass_probe", data_settings: str | None = None
) -> None:
    """Command-line entry: write the report and print its path."""
    print(f"Probe report: {write_report(tracking_uri, experiment, out_dir, data_settings)}")


if __name__ == "__main__":
    from components.checks.cli import fire_main

    fire_main(main)
