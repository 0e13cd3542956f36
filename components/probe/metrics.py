"""Validation AUC for the probe (MONAI ``ROCAUCMetric``) and the run recorder handler.

- :class:`ProbeAUC`: ROC AUC of one class (``class_index``) or the mean over classes whose AUC is
  defined (a class with a single value in ``y`` is skipped with a warning instead of turning the
  mean into NaN). ``y_pred``/``y`` are ``[B, N]`` (probabilities / one-hot or 0-1 targets).
- :func:`auc_handlers`: one Ignite metric handler per class, for ``additional_metrics``.
- :class:`ProbeRecorder`: after training writes ``summary.json`` (best mean AUC and the per-class
  AUCs of that epoch) and ``head.pt`` (the best head's weights). MLflow logging is MONAI's
  ``MLFlowHandler`` from the bundle's tracking settings (``--tracking configs/mlflow.json``: the run
  parameters ``train#run_params``, ``head.pt`` and ``summary.json`` as artifacts).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from monai.handlers import IgniteMetricHandler, from_engine
from monai.metrics import ROCAUCMetric
from monai.metrics.rocauc import compute_roc_auc

from components.io.atomic import atomic_write


class ProbeAUC(ROCAUCMetric):
    """ROC AUC of class ``class_index`` (NaN when undefined), or the mean of the defined per-class AUCs."""

    def __init__(self, class_index: int | None = None) -> None:
        super().__init__(average="none")
        self.class_index = class_index

    def aggregate(self, average: Any = None) -> float:  # type: ignore[override]
        y_pred, y = self.get_buffer()
        if y_pred.ndim == 1:
            y_pred, y = y_pred[:, None], y[:, None]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # single-class columns are reported below, once
            per_class = [float(cast(float, compute_roc_auc(y_pred[:, j], y[:, j]))) for j in range(y_pred.shape[1])]
        if self.class_index is not None:
            return per_class[self.class_index]
        defined = [v for v in per_class if not math.isnan(v)]
        if not defined:
            raise ValueError("validation AUC undefined: every class has a single value in the validation targets")
        if len(defined) < len(per_class):
            warnings.warn(
                f"mean AUC over {len(defined)} of {len(per_class)} classes (the others have a single "
                "class in the validation targets)",
                stacklevel=2,
            )
        return float(sum(defined) / len(defined))


def auc_handler(class_index: int | None = None) -> IgniteMetricHandler:
    """Ignite metric handler of :class:`ProbeAUC` on ``engine.state.output`` ``pred``/``label``."""
    return IgniteMetricHandler(
        metric_fn=ProbeAUC(class_index), output_transform=from_engine(["pred", "label"]), save_details=False
    )


def auc_handlers(names: Sequence[str], prefix: str = "val_auc_") -> dict[str, IgniteMetricHandler]:
    """``{prefix + name: handler}``, one per output column (class / label)."""
    return {f"{prefix}{_safe(n)}": auc_handler(j) for j, n in enumerate(names)}


def output_names(classes: Sequence[str], task: str) -> list[str]:
    """Names of the output columns: the positive class for binary, all classes otherwise."""
    return [str(classes[1])] if task == "binary" else [str(c) for c in classes]


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))


def _n_items(engine: Any) -> int | None:
    """Number of items in the dataset an engine actually iterates (None if it cannot be told)."""
    dataset = getattr(getattr(engine, "data_loader", None), "dataset", None)
    try:
        return len(dataset) if dataset is not None else None
    except TypeError:
        return None


class ProbeRecorder:
    """Trainer handler: track the best validation epoch, then write ``summary.json`` and ``head.pt``.

    Args:
        validator: the evaluator whose ``key_metric`` selects the best head.
        head: the classification head module (its weights at the best epoch are kept).
        output_dir: where ``summary.json`` and ``head.pt`` go.
        params: run parameters (mode, fraction, seed, ...) for the summary.
        key_metric: name of the mean-AUC metric; per-class metrics start with ``class_prefix``.
    """

    def __init__(
        self,
        validator: Any,
        head: torch.nn.Module,
        output_dir: str | os.PathLike,
        params: Mapping[str, Any] | None = None,
        key_metric: str = "val_mean_auc",
        class_prefix: str = "val_auc_",
    ) -> None:
        self.validator = validator
        self.head = head
        self.output_dir = Path(output_dir)
        self.params = {
            k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
            for k, v in dict(params or {}).items()
        }
        self.key_metric = key_metric
        self.class_prefix = class_prefix
        self.best: dict[str, Any] = {}
        self.best_head: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []

    @property
    def head_path(self) -> Path:
        return self.output_dir / "head.pt"

    @property
    def summary_path(self) -> Path:
        return self.output_dir / "summary.json"

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self._completed)
        self.validator.add_event_handler(Events.EPOCH_COMPLETED, self._validated)

    def _validated(self, validator: Any) -> None:
        metrics = {k: float(v) for k, v in validator.state.metrics.items() if isinstance(v, (int, float))}
        metrics["epoch"] = validator.state.epoch
        self.history.append(metrics)
        value = metrics.get(self.key_metric)
        if value is not None and not math.isnan(value) and (not self.best or value > self.best[self.key_metric]):
            self.best = dict(metrics)
            self.best_head = {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()}

    def _completed(self, engine: Any) -> None:
        if self.best_head is None:
            self.best_head = {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()}
        atomic_write(self.head_path, lambda p: torch.save(self.best_head, p))
        params, skipped = dict(self.params), 0
        for key, eng in (("train_rows", engine), ("val_rows", self.validator)):
            used = _n_items(eng)
            if used is None:
                continue
            listed = params.get(key)
            if isinstance(listed, int) and listed > used:  # rows dropped as unreadable (logged when skipped)
                skipped += listed - used
                params[f"{key}_listed"] = listed
            params[key] = used
        summary = {
            "params": params,
            "skipped_rows": skipped,
            "best_epoch": self.best.get("epoch"),
            "best_mean_auc": self.best.get(self.key_metric),
            "best_auc_per_class": {
                k[len(self.class_prefix) :]: v for k, v in self.best.items() if k.startswith(self.class_prefix)
            },
            "history": self.history,
        }
        atomic_write(self.summary_path, lambda p: Path(p).write_text(json.dumps(summary, indent=1)))
