"""The MLflow store a sweep logs into: a checked client, the default SQLite store, the experiment and its artifacts.

MLflow is always used through an ``MlflowClient`` bound to one tracking URI: no process-wide tracking
URI or active experiment is set, so nothing leaks into later runs or subprocesses.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from components.checks.errors import OptionError

__all__ = ["tracking_client", "default_tracking_uri", "experiment_id", "artifact_location", "finished_keys"]

logger = logging.getLogger(__name__)


def tracking_client(tracking_uri: str, must_exist: bool = False) -> Any:
    """An ``MlflowClient`` on ``tracking_uri`` that has been read once; :class:`OptionError` naming the
    store if it cannot be (corrupt, truncated, unknown schema) or, with ``must_exist``, if a SQLite
    store file is missing (MLflow would create an empty one)."""
    import mlflow

    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        if must_exist and not db.is_file():
            raise OptionError("tracking_uri", f"{db}: no MLflow store there")
    try:
        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)
    except Exception as e:  # SQLAlchemy / MLflow errors of an unusable store
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise OptionError("tracking_uri", f"{tracking_uri}: MLflow store cannot be read ({first[:200]})") from None
    if tracking_uri.startswith("sqlite:///"):
        _check_schema(tracking_uri, Path(tracking_uri[len("sqlite:///") :]))
    return client


def _check_schema(tracking_uri: str, db: Path) -> None:
    """:class:`OptionError` when a SQLite store's schema revision is not the installed MLflow's: MLflow
    opens such a store (written by another MLflow version) without a word and fails on a later write."""
    import sqlite3

    try:
        from mlflow.store.db.utils import _get_latest_schema_revision

        head = _get_latest_schema_revision()
    except Exception:  # another MLflow layout: its own checks are all there is
        return
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            found = con.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error as e:
        raise OptionError("tracking_uri", f"{tracking_uri}: MLflow store cannot be read ({e})") from None
    if found is None or found[0] != head:
        raise OptionError(
            "tracking_uri",
            f"{tracking_uri}: MLflow store cannot be read (schema revision {found[0] if found else 'none'}, this "
            f"MLflow expects {head}: written by another MLflow version; `mlflow db upgrade` migrates an older one)",
        )


def default_tracking_uri(out_dir: str | os.PathLike) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else a SQLite store in ``out_dir`` (MLflow 3 has no file store)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(out_dir).resolve() / 'mlruns.db'}"


def artifact_location(tracking_uri: str) -> str | None:
    """For a local SQLite store, artifacts go to ``mlruns/`` beside the database (as MONAI's
    ``MLFlowHandler`` does), not to ``./mlruns`` of whatever folder the sweep runs in."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri[len("sqlite:///") :]).parent / "mlruns").resolve().as_uri()


def experiment_id(client: Any, name: str, tracking_uri: str) -> str:
    """Id of the experiment ``name`` (created when missing); a deleted one is an error."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifact_location(tracking_uri))
    if exp.lifecycle_stage != "active":
        raise ValueError(f"MLflow experiment {name!r} is deleted; restore it or choose another name")
    want = artifact_location(tracking_uri)
    if want and exp.artifact_location != want and exp.artifact_location.rstrip("/").endswith("/mlruns"):
        _move_artifact_location(tracking_uri, exp.artifact_location, want)
    return exp.experiment_id


def _move_artifact_location(tracking_uri: str, old: str, new: str) -> None:
    """Point the experiments and runs of a copied SQLite store at the ``mlruns/`` beside it: the
    location is stored as an absolute URI, so a sweep continued in a copy wrote into the original."""
    import sqlite3

    with sqlite3.connect(tracking_uri[len("sqlite:///") :]) as con:
        con.execute("UPDATE experiments SET artifact_location = ? WHERE artifact_location = ?", (new, old))
        con.execute(
            "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE substr(artifact_uri, 1, ?) = ?",
            (new, len(old) + 1, len(old), old),
        )
    logger.warning("MLflow artifacts now go to %s, beside the store (they went to %s: a copied store)", new, old)


def finished_keys(client: Any, exp_id: str) -> set[tuple[str, str]]:
    """``{(run_key, settings_sha256)}`` of every FINISHED run (one store may hold several settings)."""
    runs = client.search_runs(
        [exp_id],
        filter_string="attributes.status = 'FINISHED'",
        max_results=10000,
        order_by=["attributes.start_time DESC"],
    )
    return {
        (r.data.tags["run_key"], r.data.tags.get("settings_sha256", "")) for r in runs if r.data.tags.get("run_key")
    }
