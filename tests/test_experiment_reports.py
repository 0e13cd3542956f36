"""Committed experiment reports are whole: every picture a report links is in the repository beside it."""

from __future__ import annotations

import re
import subprocess

from tests._bundles import REPO


def test_every_picture_linked_by_a_committed_report_is_committed():
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.splitlines())
    reports = [p for p in tracked if p.startswith(("experiments/", "docs/")) and p.endswith(".md")]
    assert reports
    missing = []
    for rel in reports:
        text = (REPO / rel).read_text()
        for link in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text):
            if "://" in link:
                continue
            target = (REPO / rel).parent / link
            name = str(target.resolve().relative_to(REPO.resolve())) if target.resolve().is_relative_to(REPO) else link
            if name not in tracked:
                missing.append(f"{rel}: {link}")
    assert not missing, missing


def test_pretraining_curve_names_its_settings_and_plots_dice_in_percent(tmp_path):
    from tests._scripts import load_script

    exp = load_script("pretrain_experiment")
    out = tmp_path / "pretrain_slic"
    out.mkdir()
    (out / "settings.json").write_text(
        '{"source": "slic", "preset": "small", "spacing": [3.0, 3.0, 3.0], "crop_size": [64, 64, 64]}'
    )
    (out / "curve.csv").write_text(
        "iteration,minutes,train_loss,dice_demo5,dice_all\n0,1,,0.03,0.04\n100,2,0.9,0.25,0.2\n"
    )
    exp.plot_curve(out / "curve.csv", out / "curve.png")
    assert (out / "curve.png").stat().st_size > 10_000
    title = exp._curve_title(out)
    assert "slic masks, preset small, 3.0 mm, 64^3" in title and "held out: MNI152" in title


def test_fewshot_plot_title_names_dataset_classes_seeds_and_error_bars():
    from components.fewshot.report import _plot_title

    runs = [
        {"status": "FINISHED", "params": {"dataset": "brains", "preset": "tiny", "classes": "a,b", "seed": s}}
        for s in ("0", "1")
    ]
    title = _plot_title(runs)
    assert "brains" in title and "a, b" in title and "[0, 1]" in title and "sample std (ddof=1)" in title
    assert "no error bars" in _plot_title(runs[:1])
