"""A sweep's runs read back through the MLflow API, grouped by the data setting they were made with."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from components.checks.errors import OptionError
from components.io.atomic import atomic_json
from components.tracking.store import tracking_client

__all__ = ["collect_runs", "group_by_settings", "latest_finished", "sweep_parent", "write_sweep_status"]


def collect_runs(tracking_uri: str, experiment: str) -> list[dict[str, Any]]:
    """Every sweep run of ``experiment`` (tag ``run_key``; not the sweep-level parents) as
    ``{"params", "metrics", "tags", "status", "run_id", "experiment_id"}`` (MLflow client API)."""
    client = tracking_client(tracking_uri, must_exist=True)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise OptionError("experiment", f"{tracking_uri}: no MLflow experiment named {experiment!r}")
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=10000) if r.data.tags.get("run_key")]
    return [
        {
            "params": dict(r.data.params),
            "metrics": dict(r.data.metrics),
            "tags": dict(r.data.tags),
            "status": r.info.status,
            "run_id": r.info.run_id,
            "experiment_id": r.info.experiment_id,
        }
        for r in runs
    ]


def group_by_settings(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``{data_settings_sha256: runs}``, the setting of the newest run first (runs of older versions: ``""``)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:  # search_runs returns newest first
        groups.setdefault(r["tags"].get("data_settings_sha256", ""), []).append(r)
    return groups


def latest_finished(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{run_key: run}``: the newest FINISHED run of each key (``runs`` newest first, as ``search_runs``)."""
    latest: dict[str, dict[str, Any]] = {}
    for r in runs:
        if r["status"] == "FINISHED" and r["tags"].get("run_key"):
            latest.setdefault(r["tags"]["run_key"], r)
    return latest


@contextmanager
def sweep_parent(client: Any, parent_id: str) -> Iterator[None]:
    """The sweep-level run's lifetime: FINISHED when the block ends, KILLED when it raises."""
    from mlflow.entities import RunStatus

    try:
        yield
    except BaseException:
        client.set_terminated(parent_id, RunStatus.to_string(RunStatus.KILLED))
        raise
    client.set_terminated(parent_id, RunStatus.to_string(RunStatus.FINISHED))


def write_sweep_status(
    out: str | os.PathLike, tracking_uri: str, experiment: str, data_sha: str, parent_id: str, runs: dict[str, str]
) -> dict[str, Any]:
    """``<out>/sweep_status.json`` (where the runs are, the data setting, the parent run, a status per key); returned."""
    summary = {
        "tracking_uri": tracking_uri,
        "experiment": experiment,
        "data_settings_sha256": data_sha,
        "parent_run_id": parent_id,
        "runs": runs,
    }
    atomic_json(Path(out) / "sweep_status.json", summary)
    return summary
