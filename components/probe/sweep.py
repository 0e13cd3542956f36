"""Probe sweep: encoder (pretrained frozen, random frozen, trained from scratch) x data fraction x seed.

Each combination is a *run key* ``<run>-f<fraction>-s<seed>`` (e.g. ``pretrained_frozen-f0.3-s0``). A run
trains the bundle's ``configs/train.json`` (MONAI ``SupervisedTrainer`` / ``SupervisedEvaluator``,
the best head chosen on the validation split's mean AUC), then scores its best model on the test split
with ``configs/evaluate.json`` (the validation split when the datalist has no test rows). Runs:

========================  =======================  =====================================================
run                       encoder                  trained
========================  =======================  =====================================================
``pretrained_frozen``     ``pretrained`` weights   the head only (features cached once)
``random_frozen``         random                   the head only: the floor a pretrained encoder must beat
``scratch_full``          random                   encoder and head (the paper's "full training")
``pretrained_finetune``   ``pretrained`` weights   encoder and head
========================  =======================  =====================================================

MLflow (same conventions as the few-shot sweep): a sweep-level run (tag ``stage=mass_probe_sweep``, the
sweep's settings as params, ``report.md`` and the plot as artifacts) with one child run per key
(tag ``run_key``; per epoch ``train_loss``, ``val_mean_auc``, ``val_auc_<class>`` from MONAI's
``MLFlowHandler``; at the end ``test_mean_auc``, ``test_auc_<class>``, ``best_val_mean_auc``,
``fraction``, ``seed``, ``train_rows``, ``seconds``; ``summary.json``, test metrics and ``head.pt`` as
artifacts). A run's identity (tag ``settings_sha256``) is its data setting (tag
``data_settings_sha256``: dataset, classes, task, datalist file hash, preset, spacing, window,
modality), the pretrained file's hash and its training settings: a sweep started again skips keys
finished with the same identity and redoes the others; a run folder of other settings is kept
aside as ``runs/<key>.<its settings_sha256>``. A failing run is recorded (FAILED, ``error.txt``) and
the others go on.

Run it as the bundle config ``configs/sweep.json`` of ``mass_probe``::

    cd bundles/mass_probe
    python -m monai.bundle run --config_file configs/sweep.json --logging_file configs/logging.conf \
        --dataset_dir /data/task --pretrained /models/mass_pretrain.pt --sweep_fractions "[0.1,1.0]"
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from components.checks.errors import OptionError, error_message
from components.io.atomic import atomic_json
from components.tracking.identity import code_tags, digest, file_sha256
from components.tracking.report import log_report, raise_if_failed
from components.tracking.runs import sweep_parent, write_sweep_status
from components.tracking.store import default_tracking_uri, experiment_id, finished_keys, tracking_client

__all__ = ["RUNS", "run_bundle", "run_key", "run_one", "run_sweep", "check_sweep", "sweep_and_report"]

logger = logging.getLogger(__name__)
EXPERIMENT = "mass_probe"
BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "mass_probe"
RUNS: dict[str, dict[str, str]] = {  # name -> the bundle's mode and where the encoder comes from
    "pretrained_frozen": {"mode": "frozen", "encoder": "pretrained"},
    "random_frozen": {"mode": "frozen", "encoder": "random"},
    "scratch_full": {"mode": "scratch", "encoder": "random"},
    "pretrained_finetune": {"mode": "finetune", "encoder": "pretrained"},
}
_FIXED = ("datalist", "classes", "output_dir", "ckpt_dir", "cache_dir", "overwrite", "pretrained", "bundle_root")


def run_bundle(
    overrides: Mapping[str, Any],
    bundle: str | os.PathLike,
    configs: Sequence[str] = ("train.json",),
    quiet: bool = False,
    prepare: Callable[[Any], Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Run the probe bundle's ``configs`` (merged in order, e.g. ``("train.json", "demo.json")``) with
    ``overrides`` in this process; returns its ``summary.json``.

    ``quiet`` keeps only warnings on the console; ``prepare(workflow)`` is called once it is initialised,
    before it runs (e.g. to attach handlers); ``kwargs`` go to ``ConfigWorkflow`` (e.g. ``tracking``).
    """
    import logging

    from monai.bundle import ConfigWorkflow

    bundle = Path(bundle)
    wf = ConfigWorkflow(
        config_file=[str(bundle / "configs" / c) for c in configs],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type="train",
        bundle_root=str(bundle),
        **kwargs,
        **dict(overrides),
    )
    wf.initialize()
    if quiet:
        wf.parser.get_parsed_content("train#trainer")  # handlers create their loggers when instantiated
        for name in (
            "",
            "ignite",
            "ignite.engine.engine.SupervisedTrainer",
            "ignite.engine.engine.SupervisedEvaluator",
            "components.probe.features",
        ):
            logging.getLogger(name).setLevel(logging.WARNING)
        for logger in [logging.getLogger(), *logging.root.manager.loggerDict.values()]:
            if isinstance(logger, logging.Logger):
                logger.setLevel(logging.WARNING)
    if prepare is not None:
        prepare(wf)
    wf.run()
    wf.finalize()
    return json.loads((Path(wf.parser.get_parsed_content("output_dir")) / "summary.json").read_text())


def run_key(run: str, fraction: float, seed: int) -> str:
    return f"{run}-f{float(fraction):g}-s{int(seed)}"


def training_settings(cfg: Mapping[str, Any], run: str) -> dict[str, Any]:
    """Learning rate, epochs and extra bundle overrides of ``run`` (frozen heads vs trained encoders)."""
    base = cfg["frozen"] if RUNS[run]["mode"] == "frozen" else cfg["trained"]
    return {
        "learning_rate": float(base["learning_rate"]),
        "max_epochs": int(base["max_epochs"]),
        "overrides": dict(cfg.get("overrides") or {}),
    }


def data_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What every run of a sweep shares and what changes its scores."""
    return {
        "dataset": str(cfg["dataset"]),
        "classes": [str(c) for c in cfg["classes"]],
        "task": str(cfg["task"]),
        "datalist_sha256": file_sha256(cfg["datalist"]),
        "preset": str(cfg["preset"]),
        "spacing": [float(v) for v in cfg["spacing"]],
        "spatial_size": [int(v) for v in cfg["spatial_size"]],
        "modality": str(cfg["modality"]),
    }


def _test_metrics(cfg: Mapping[str, Any], overrides: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """Score the run's best model (``models/model.pt``) with ``configs/evaluate.json`` on the test split."""
    from monai.bundle import ConfigWorkflow

    bundle = Path(cfg["bundle_dir"]).resolve()
    wf = ConfigWorkflow(
        config_file=[str(bundle / "configs" / c) for c in ("train.json", "evaluate.json")],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(bundle),
        **{**overrides, "output_dir": str(run_dir / "test"), "ckpt_dir": str(run_dir / "models")},
    )
    wf.initialize()
    split = "test" if wf.parser.get_parsed_content("splits")["test"] else "val"
    wf.run()
    wf.finalize()
    with open(run_dir / "test" / "metrics.csv") as f:
        raw = {row[0]: float(row[1]) for row in csv.reader(f) if len(row) == 2}
    return {
        "eval_split": split,
        "test_mean_auc": raw.get("val_mean_auc"),
        "test_auc": {k[len("val_auc_") :]: v for k, v in raw.items() if k.startswith("val_auc_")},
    }


def _curves(wf: Any, tracking: Mapping[str, Any] | None, run_id: str | None) -> None:
    """Log the training's curves into the key's MLflow run (MONAI ``MLFlowHandler``): train_loss per
    iteration, validation AUCs per epoch."""
    if not tracking or not run_id:
        return
    from monai.handlers import MLFlowHandler, from_engine

    trainer = wf.parser.get_parsed_content("train#trainer")
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    common = dict(tracking_uri=tracking["tracking_uri"], experiment_name=tracking["experiment"])
    for engine, handler in (
        (trainer, MLFlowHandler(**common, output_transform=from_engine(["loss"], first=True), tag_name="train_loss")),
        (evaluator, MLFlowHandler(**common, iteration_log=False, global_epoch_transform=lambda _: trainer.state.epoch)),
    ):
        handler.cur_run = handler.client.get_run(run_id)  # this run, not another of the same name
        handler.attach(engine)


def run_one(
    cfg: Mapping[str, Any],
    run: str,
    fraction: float,
    seed: int,
    run_dir: Path,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Train and test one key in ``run_dir``; returns ``{"summary", "test_mean_auc", "test_auc", ...}``."""
    t0 = time.time()
    spec, train = RUNS[run], training_settings(cfg, run)
    overrides = {
        "datalist": str(Path(cfg["datalist"]).resolve()),
        "classes": [str(c) for c in cfg["classes"]],
        "task": cfg["task"],
        "preset": cfg["preset"],
        "spacing": list(cfg["spacing"]),
        "spatial_size": list(cfg["spatial_size"]),
        "modality": cfg["modality"],
        "mode": spec["mode"],
        "pretrained": str(cfg.get("pretrained") or "") if spec["encoder"] == "pretrained" else "",
        "fraction": float(fraction),
        "seed": int(seed),
        "output_dir": str(run_dir),
        "ckpt_dir": str(run_dir / "models"),
        "cache_dir": str(cfg["cache_dir"]),
        "overwrite": True,  # the folder belongs to this key; an unfinished earlier try is redone
        "learning_rate": train["learning_rate"],
        "train#trainer#max_epochs": train["max_epochs"],
        **train["overrides"],
    }
    if spec["encoder"] == "pretrained" and not overrides["pretrained"]:
        raise OptionError("pretrained", f"run {run} needs pretrained weights; none given")
    summary = run_bundle(
        overrides,
        cfg["bundle_dir"],
        quiet=bool(cfg.get("quiet", True)),
        prepare=lambda wf: _curves(wf, cfg.get("_tracking"), run_id),
    )
    test = _test_metrics(cfg, overrides, run_dir)
    return {"summary": summary, **test, "seconds": round(time.time() - t0, 1)}


def _run_params(cfg: Mapping[str, Any], run: str, fraction: float, seed: int, datalist_sha: str) -> dict[str, Any]:
    train = training_settings(cfg, run)
    return {
        "run": run,
        "mode": RUNS[run]["mode"],
        "encoder": RUNS[run]["encoder"],
        "fraction": fraction,
        "seed": seed,
        "dataset": cfg["dataset"],
        "task": cfg["task"],
        "classes": ",".join(str(c) for c in cfg["classes"]),
        "preset": cfg["preset"],
        "spacing": cfg["spacing"],
        "spatial_size": cfg["spatial_size"],
        "modality": cfg["modality"],
        "datalist": str(cfg["datalist"]),
        "datalist_sha256": datalist_sha,
        "pretrained": str(cfg.get("pretrained") or "") if RUNS[run]["encoder"] == "pretrained" else "",
        "learning_rate": train["learning_rate"],
        "max_epochs": train["max_epochs"],
        "overrides": json.dumps(train["overrides"], sort_keys=True),
    }


def _finish_run(client: Any, run_id: str, result: Mapping[str, Any] | None, error: str | None, run_dir: Path) -> None:
    """Final metrics, artifacts and status of a key's run."""
    from mlflow.entities import Metric, RunStatus

    if error is not None or result is None:
        client.set_tag(run_id, "error", (error or "no result")[-4000:])
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        return
    summary = result["summary"]
    metrics: dict[str, Any] = {
        "test_mean_auc": result["test_mean_auc"],
        "best_val_mean_auc": summary.get("best_mean_auc"),
        "best_epoch": summary.get("best_epoch"),
        "train_rows": summary["params"].get("train_rows"),
        "fraction": float(summary["params"].get("fraction", "nan")),  # numeric twins: metrics.fraction <= 0.3
        "seed": float(summary["params"].get("seed", "nan")),
        "seconds": result["seconds"],
    }
    metrics.update({f"test_auc_{k}": v for k, v in result["test_auc"].items()})
    now = int(time.time() * 1000)
    finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in finite.items()])
    client.set_tag(run_id, "eval_split", result["eval_split"])
    for f in (run_dir / "result.json", run_dir / "summary.json", run_dir / "head.pt", run_dir / "test" / "metrics.csv"):
        if f.is_file():
            client.log_artifact(run_id, str(f), artifact_path="test" if f.parent.name == "test" else None)
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


def _start_parent(client: Any, exp_id: str, cfg: Mapping[str, Any], tags: Mapping[str, str], data_sha: str) -> str:
    from mlflow.entities import Param
    from mlflow.tracking.context.registry import resolve_tags

    all_tags = resolve_tags({"stage": "mass_probe_sweep", "data_settings_sha256": data_sha, **tags})
    run_id = client.create_run(exp_id, run_name=f"sweep-{cfg['dataset']}-{data_sha[:8]}", tags=all_tags).info.run_id
    params = {
        "dataset": cfg["dataset"],
        "task": cfg["task"],
        "classes": ",".join(str(c) for c in cfg["classes"]),
        "datalist": str(cfg["datalist"]),
        "preset": cfg["preset"],
        "spacing": cfg["spacing"],
        "spatial_size": cfg["spatial_size"],
        "runs": ",".join(cfg["runs"]),
        "fractions": list(cfg["fractions"]),
        "seeds": list(cfg["seeds"]),
        "frozen": json.dumps(dict(cfg["frozen"]), sort_keys=True),
        "trained": json.dumps(dict(cfg["trained"]), sort_keys=True),
        "overrides": json.dumps(dict(cfg.get("overrides") or {}), sort_keys=True),
    }
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run_id


def run_sweep(cfg: Mapping[str, Any], out_dir: str | os.PathLike, tracking_uri: str | None = None) -> dict[str, Any]:
    """Run every missing key of ``cfg`` (see ``configs/sweep.json``) into ``out_dir``; returns a status per key."""
    from mlflow.entities import Param, RunStatus
    from mlflow.tracking.context.registry import resolve_tags

    check_sweep(cfg)
    out = Path(out_dir).resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    tracking_uri = tracking_uri or default_tracking_uri(out)
    client = tracking_client(tracking_uri)
    experiment = cfg.get("experiment") or EXPERIMENT
    exp_id = experiment_id(client, experiment, tracking_uri)
    done = finished_keys(client, exp_id)
    data = data_settings(cfg)
    data_sha = digest(data)
    tags = code_tags(cfg.get("bundle_dir") or BUNDLE)
    parent = _start_parent(client, exp_id, cfg, tags, data_sha)
    cfg = {
        **cfg,
        "cache_dir": cfg.get("cache_dir") or str(out / "feature_cache"),
        "_tracking": {"tracking_uri": tracking_uri, "experiment": experiment},
    }
    pretrained_sha = (
        file_sha256(cfg["pretrained"]) if cfg.get("pretrained") and os.path.isfile(cfg["pretrained"]) else ""
    )
    status: dict[str, str] = {}
    with sweep_parent(client, parent):
        for run, fraction, seed in itertools.product(cfg["runs"], cfg["fractions"], cfg["seeds"]):
            key = run_key(run, fraction, seed)
            settings = {
                "data_settings_sha256": data_sha,
                "pretrained_sha256": pretrained_sha if RUNS[run]["encoder"] == "pretrained" else "none",
                **training_settings(cfg, run),
            }
            settings_sha = digest(settings)
            if (key, settings_sha) in done:
                status[key] = "skipped (finished)"
                continue
            run_dir = out / "runs" / key
            result_file = run_dir / "result.json"
            old = json.loads(result_file.read_text()) if result_file.is_file() else None
            if old is not None and old.get("settings_sha256") != settings_sha:
                aside = run_dir.with_name(f"{key}.{old.get('settings_sha256') or 'earlier'}")
                if aside.exists():
                    aside = run_dir.with_name(f"{aside.name}.{int(time.time())}")
                os.replace(run_dir, aside)  # a finished run of other settings keeps its files
                logger.info("%s: earlier run of other settings kept in %s", key, aside)
                old = None
            run_dir.mkdir(parents=True, exist_ok=True)
            run_tags = resolve_tags(
                {
                    **tags,
                    "mlflow.parentRunId": parent,
                    "run_key": key,
                    "stage": "mass_probe",
                    "data_settings_sha256": data_sha,
                    "settings_sha256": settings_sha,
                }
            )
            start = int(time.time() * 1000) - int(float((old or {}).get("seconds") or 0) * 1000)
            run_id = client.create_run(exp_id, start_time=start, run_name=key, tags=run_tags).info.run_id
            params = _run_params(cfg, run, float(fraction), int(seed), data["datalist_sha256"])
            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
            error = None
            if old is not None:
                result = old
                status[key] = "logged (result.json existed)"
            else:
                logger.info("%s: running", key)
                try:
                    result = run_one(cfg, run, float(fraction), int(seed), run_dir, run_id)
                    result.update({"settings_sha256": settings_sha, **settings})
                    atomic_json(result_file, result)
                    status[key] = (
                        f"done ({result['seconds']} s, {result['eval_split']} mean AUC {result['test_mean_auc']:.3f})"
                    )
                except Exception as exc:  # one failing run never stops the sweep
                    result, error = None, error_message(exc)
                    (run_dir / "error.txt").write_text(traceback.format_exc())
                    status[key] = f"failed: {error}"
                    logger.error("%s failed: %s", key, error)
            try:
                _finish_run(client, run_id, result, error, run_dir)
            except BaseException:
                client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
                raise
    return write_sweep_status(out, tracking_uri, experiment, data_sha, parent, status)


def check_sweep(cfg: Mapping[str, Any]) -> None:
    """Runs, fractions, seeds, classes and the training settings, checked before any run (bad input: exit 2)."""
    from components.checks.options import check_choice, check_exists, check_int_at_least, check_positive
    from components.probe.options import check_classes

    check_exists("datalist", cfg.get("datalist"), "datalist")
    check_classes(cfg.get("classes"), str(cfg.get("task")))
    if not cfg.get("runs"):
        raise OptionError("sweep_runs", f"no runs given; choose from {', '.join(RUNS)}")
    for run in cfg["runs"]:
        check_choice("sweep_runs", run, tuple(RUNS))
    for f in cfg.get("fractions") or ():
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise OptionError("sweep_fractions", f"each fraction must be a number in (0, 1], got {f!r}")
    if not cfg.get("fractions"):
        raise OptionError("sweep_fractions", "no fractions given")
    for seed in cfg.get("seeds") or ():
        check_int_at_least("sweep_seeds", seed, 0)
    if not cfg.get("seeds"):
        raise OptionError("sweep_seeds", "no seeds given")
    for group in ("frozen", "trained"):
        settings = cfg.get(group) or {}
        check_positive(f"{group}#learning_rate", settings.get("learning_rate"))
        check_int_at_least(f"{group}#max_epochs", settings.get("max_epochs"), 1)


def sweep_and_report(
    sweep: Mapping[str, Any],
    output_dir: str | os.PathLike,
    pretrained: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
    preset_from_checkpoint: bool = True,
    report: bool = True,
) -> dict[str, Any]:
    """Entry of the bundle config ``configs/sweep.json``: run the sweep into ``output_dir``, then
    (``report``) write ``report.md`` and ``auc_vs_fraction.png`` and log them on the sweep-level run.

    ``pretrained``: the encoder of the ``pretrained_*`` runs (empty or None: those runs are left out, with
    a warning; a missing file fails them, recorded). ``preset_from_checkpoint``: its preset replaces
    ``sweep["preset"]`` for every run.
    """
    from components.checks.options import check_writable_dir

    check_writable_dir("output_dir", output_dir)
    cfg = dict(sweep)
    cfg["runs"] = list(cfg.get("runs") or [])
    if pretrained:
        cfg["pretrained"] = str(Path(pretrained).resolve())
    else:
        dropped = [r for r in cfg["runs"] if r in RUNS and RUNS[r]["encoder"] == "pretrained"]
        if dropped:
            logger.warning("no pretrained weights given: leaving out %s", ", ".join(dropped))
        cfg["runs"] = [r for r in cfg["runs"] if r not in dropped]
    if preset_from_checkpoint and pretrained and os.path.isfile(pretrained):
        from components.network.release_checkpoint import preset_of_checkpoint

        found = preset_of_checkpoint(str(pretrained), encoder_only=True)
        if found != cfg.get("preset"):
            logger.info("preset %s taken from %s (config said %s)", found, pretrained, cfg.get("preset"))
        cfg["preset"] = found
    status = run_sweep(cfg, output_dir, tracking_uri)
    for key, s in status["runs"].items():
        logger.info("%s: %s", key, s)
    if report:
        from components.probe.report import write_report

        md = write_report(status["tracking_uri"], status["experiment"], output_dir, status["data_settings_sha256"])
        status["report"] = str(md)
        log_report(status, md, "auc_vs_fraction")
    raise_if_failed(status, "probe")
    return status
