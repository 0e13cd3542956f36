"""A sweep's report file: one section (Markdown + PNG) per data setting found in the store, and its ending.

The section's text and plot come from the stage (``mass_fewshot``: Dice vs shots; ``mass_probe``: AUC
vs fraction); what is shared is reading the runs, never mixing two data settings, writing atomically,
logging the report on the sweep-level run and the one error that lists the failed runs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from components.checks.errors import RunFailedError
from components.io.atomic import atomic_write
from components.tracking.runs import collect_runs, group_by_settings
from components.tracking.store import tracking_client

__all__ = ["write_sections", "log_report", "raise_if_failed"]

logger = logging.getLogger(__name__)
Runs = list[dict[str, Any]]


def write_sections(
    tracking_uri: str,
    experiment: str,
    out_dir: str | os.PathLike,
    data_settings: str | None,
    png_stem: str,
    plot: Callable[[Runs, Path], Path],
    render: Callable[[Runs, str, str, str | None], str],
) -> Path:
    """Write ``<out_dir>/report.md`` and ``<png_stem>.png`` (``<png_stem>_<sha>.png`` per data setting when
    the store holds several); returns the Markdown path.

    ``data_settings``: only the runs of that ``data_settings_sha256`` (a sweep's own); ``None``: every
    setting, one section each, headed by its digest. ``render(runs, experiment, tracking_uri, png_name)``
    returns a section starting with a ``# `` title line.
    """
    groups = group_by_settings(collect_runs(tracking_uri, experiment))
    if data_settings is not None:
        groups = {data_settings: groups.get(data_settings, [])}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for sha, runs in groups.items():
        name = f"{png_stem}.png" if len(groups) == 1 else f"{png_stem}_{sha or 'untagged'}.png"
        png = plot(runs, out / name)
        text = render(runs, experiment, tracking_uri, png.name)
        if len(groups) > 1:
            text = text.replace("# ", f"# Data setting {sha or 'untagged'}: ", 1)
        sections.append(text)
    md = out / "report.md"
    text = "\n\n".join(sections)
    atomic_write(md, lambda tmp: Path(tmp).write_text(text))
    return md


def log_report(status: Mapping[str, Any], md: Path, png_stem: str) -> None:
    """Log ``report.md`` and its PNG(s) on the sweep-level run ``status["parent_run_id"]``."""
    client = tracking_client(status["tracking_uri"])
    for f in (md, *sorted(md.parent.glob(f"{png_stem}*.png"))):
        client.log_artifact(status["parent_run_id"], str(f))
    logger.info("MLflow runs: mlflow ui --backend-store-uri %s", status["tracking_uri"])
    logger.info("report: %s", md)


def raise_if_failed(status: Mapping[str, Any], what: str) -> None:
    """:class:`RunFailedError` listing the runs of ``status["runs"]`` that failed (the others finished)."""
    failed = {k: s for k, s in status["runs"].items() if s.startswith("failed")}
    if failed:
        lines = "\n".join(f"  {k}: {s[len('failed: ') :]}" for k, s in failed.items())
        raise RunFailedError(
            f"{len(failed)} of {len(status['runs'])} {what} run(s) failed (the others finished):\n{lines}"
        )
