"""Few-shot sweep: shots x seeds x mode (IC, FT) x initialisation, one MLflow run per combination.

Each combination is a *run key* ``<init>-<mode>-k<shots>-s<seed>``. A run:

* IC: builds ``MASSNet`` with the initialisation, encodes the K support volumes (averaged per class),
  saves the task embedding (``task.pt``) and segments every test volume;
* FT: runs the bundle's ``configs/train.json`` (``SupervisedTrainer``/``SupervisedEvaluator``, AdamW,
  cosine, early stopping) through MONAI's ``ConfigWorkflow`` on the same K volumes, then segments the
  test volumes with the best checkpoint.

Scores (:func:`components.inference.evaluate.evaluate`) are written to ``<out>/runs/<key>/result.json``
(temp name, then rename) and logged to MLflow (params mode, shots, seed, init, dataset, preset, ...;
metrics ``dice_<class>``, ``hd95_<class>``, ``dice_mean``, ``hd95_mean``; tag ``run_key``). A sweep
started again skips every key with a FINISHED MLflow run, and re-logs (without recomputing) keys whose
``result.json`` exists but whose MLflow run did not finish. Both count only when made with the same
settings (tag and field ``settings_sha256``: the dataset name, classes, split file content, preset,
spacing, window, modality, the initialisation file's content and, for FT, ``ft_overrides``): another
dataset, split or finetuning setting in the same store is run, not skipped, and an earlier run folder
of other settings is kept as ``runs/<key>.<its settings_sha256>``. The report reads the newest run of
each key among the runs of one data setting (tag ``data_settings_sha256``), never mixing two. A
failing run is recorded (status FAILED, error in ``error.txt``) and the others go on.

Run it as the bundle config ``configs/sweep.json`` of ``mass_fewshot`` (every option is a config id;
:func:`sweep_and_report` is its ``run`` entry)::

    cd bundles/mass_fewshot
    python -m monai.bundle run --config_file configs/sweep.json --logging_file configs/logging.conf \
        --dataset_dir /data/brains --pretrained /models/mass_pretrain.pt --sweep_shots "[1,5]"
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import shutil
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from components.checks.errors import error_message
from components.data.classes import parse_classes
from components.data.splits import load_split, sample_support
from components.fewshot.finetune import build_incontext_network
from components.inference.evaluate import evaluate
from components.inference.incontext import segment_in_chunks
from components.inference.support import encode_support
from components.io.atomic import atomic_json
from components.network.release_checkpoint import preset_of_checkpoint
from components.tracking.identity import code_tags as identity_code_tags
from components.tracking.identity import digest, file_sha256
from components.tracking.report import log_report, raise_if_failed
from components.tracking.runs import sweep_parent, write_sweep_status
from components.tracking.store import default_tracking_uri, experiment_id, finished_keys, tracking_client

__all__ = ["run_key", "run_one", "run_sweep", "check_sweep", "sweep_and_report"]

logger = logging.getLogger(__name__)
EXPERIMENT = "mass_fewshot"
_BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "mass_fewshot"
MODES = ("ic", "ft")


def run_key(init: str, mode: str, shots: int, seed: int) -> str:
    return f"{init}-{mode}-k{int(shots)}-s{int(seed)}"


def _fixed_class_predictor(preset: str, num_classes: int, ckpt: Path, device: str):
    from components.network.nets import FixedClassNet

    model = FixedClassNet(preset=preset, num_classes=num_classes)
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: finetuning wrote no checkpoint (is val_interval <= max_epochs?)")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    model.load_state_dict(state.get("model", state) if isinstance(state, dict) and "model" in state else state)
    model = model.to(device).eval()
    return lambda x: model(x)


def run_one(cfg: Mapping[str, Any], init: str, mode: str, shots: int, seed: int, run_dir: Path) -> dict[str, Any]:
    """Compute one sweep run; returns the :func:`~components.inference.evaluate.evaluate` summary (+ timing)."""
    t0 = time.time()
    classes = parse_classes(cfg["classes"])
    split = load_split(cfg["split_file"])
    support = sample_support(split["train"], shots, seed)
    ckpt = cfg["inits"][init]
    device = cfg.get("device") or ("cuda:0" if torch.cuda.is_available() else "cpu")
    common = dict(spacing=cfg["spacing"], roi_size=cfg["roi_size"], modality=cfg["modality"])
    torch.manual_seed(seed)
    if mode == "ic":
        net = build_incontext_network(cfg["preset"], init, ckpt, seed=seed).to(device)
        task = encode_support(net, support, classes, device=device, **common)
        task.save(run_dir / "task.pt")
        predictor = lambda x: segment_in_chunks(net.segment, x, task)  # noqa: E731
    elif mode == "ft":
        from monai.bundle import ConfigWorkflow

        bundle = Path(cfg["bundle_dir"]).resolve()
        overrides = {
            "bundle_root": str(bundle),
            "split_file": str(Path(cfg["split_file"]).resolve()),
            "classes": {c.name: list(c.label_ids) for c in classes},
            "preset": cfg["preset"],
            "init": init,
            "init_checkpoint": str(ckpt or ""),
            "shots": int(shots),
            "seed": int(seed),
            "output_dir": str(run_dir),
            "ckpt_dir": str(run_dir / "models"),
            "spacing": list(cfg["spacing"]),
            "roi_size": list(cfg["roi_size"]),
            "modality": cfg["modality"],
            **dict(cfg.get("ft_overrides", {})),
        }
        wf = ConfigWorkflow(
            config_file=str(bundle / "configs" / "train.json"),
            workflow_type="train",
            logging_file=str(bundle / "configs" / "logging.conf"),
            **overrides,
        )
        wf.initialize()
        child = _track_finetuning(wf, cfg.get("_tracking"), run_key(init, mode, shots, seed), overrides)
        try:
            wf.run()
        finally:
            if child is not None:
                child.close()  # FINISHED (also after a failure: its curve up to there is kept)
        wf.finalize()
        predictor = _fixed_class_predictor(cfg["preset"], len(classes), run_dir / "models" / "model.pt", device)
    else:
        raise ValueError(f"mode must be 'ic' or 'ft', got {mode!r}")
    result = evaluate(predictor, split["test"], classes, device=device, save_dir=run_dir / "pred", **common)
    result.update({"seconds": round(time.time() - t0, 1), "support": [s["image"] for s in support]})
    return result


_FT_FIXED = ("bundle_root", "split_file", "classes", "output_dir", "ckpt_dir")  # logged elsewhere or paths


def _track_finetuning(wf: Any, tracking: Mapping[str, Any] | None, key: str, overrides: Mapping[str, Any]) -> Any:
    """Log a sweep's FT training as a child MLflow run of the sweep-level run (MONAI ``MLFlowHandler``):
    loss per iteration, lr and validation Dice per epoch, the FT settings as params. ``None`` without
    ``tracking`` (``{"tracking_uri", "experiment", "parent_run_id"}``, set by the sweep)."""
    if not tracking:
        return None
    import uuid

    from monai.handlers import MLFlowHandler, from_engine

    p = wf.parser
    trainer, evaluator = p.get_parsed_content("train#trainer"), p.get_parsed_content("validate#evaluator")
    name = f"{key}-finetuning-{uuid.uuid4().hex[:8]}"
    client = tracking_client(tracking["tracking_uri"])
    exp_id = client.get_experiment_by_name(tracking["experiment"]).experiment_id
    tags = {"mlflow.parentRunId": tracking["parent_run_id"], "stage": "mass_fewshot_ft", "ft_of": key}
    client.create_run(exp_id, run_name=name, tags=tags)  # MLFlowHandler continues the active run of this name
    settings = {
        "learning_rate": p.get_parsed_content("learning_rate"),
        "max_epochs": trainer.state.max_epochs,
        "epoch_length": trainer.state.epoch_length,
        "batch_size": p.get_parsed_content("batch_size"),
        "ema_decay": p.get_parsed_content("ema_decay"),
        "ft_overrides": json.dumps({k: v for k, v in overrides.items() if k not in _FT_FIXED}, default=str),
    }
    common = dict(tracking_uri=tracking["tracking_uri"], experiment_name=tracking["experiment"], run_name=name)
    train_log = MLFlowHandler(
        **common, output_transform=from_engine(["loss"], first=True), experiment_param=settings, epoch_log=True
    )
    train_log.attach(trainer)
    val_log = MLFlowHandler(**common, iteration_log=False, global_epoch_transform=lambda _: trainer.state.epoch)
    val_log.attach(evaluator)
    return train_log


def init_fingerprint(cfg: Mapping[str, Any], init: str) -> str:
    """SHA-256 (16 hex digits) of the initialisation's checkpoint file; ``"none"`` for scratch or a missing file."""
    path = cfg["inits"].get(init)
    if not path or not os.path.isfile(path):
        return "none"
    return file_sha256(path)


def data_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What every run of a sweep shares and what changes its scores: dataset, classes, split, grid, preset."""
    return {
        "dataset": str(cfg["dataset"]),
        "classes": {c.name: list(c.label_ids) for c in parse_classes(cfg["classes"])},
        "split_sha256": file_sha256(cfg["split_file"]),
        "preset": str(cfg["preset"]),
        "spacing": [float(v) for v in cfg["spacing"]] if cfg.get("spacing") is not None else None,
        "roi_size": [int(v) for v in cfg["roi_size"]],
        "modality": str(cfg.get("modality")),
    }


def run_settings(cfg: Mapping[str, Any], mode: str, init_sha256: str, data_sha256: str) -> dict[str, Any]:
    """Everything that changes one run's result besides its key: the data settings (their digest), the
    initialisation file's hash and, for finetuning, the finetuning overrides."""
    return {
        "data_settings_sha256": data_sha256,
        "init_sha256": init_sha256,
        "ft_overrides": dict(cfg.get("ft_overrides") or {}) if mode == "ft" else {},
    }


def _log_outputs(client: Any, run_id: str, run_dir: Path, max_mb: float) -> list[str]:
    """Log the run's model (FT ``models/model.pt``), task embedding (IC ``task.pt``) and predicted label
    maps (``pred/``) as artifacts, each file only while the run's total stays within ``max_mb``
    (0: none); returns the names left out."""
    files = [run_dir / "models" / "model.pt", run_dir / "task.pt", *sorted((run_dir / "pred").glob("*.nii*"))]
    budget, skipped = max_mb * 1e6, []
    for f in (f for f in files if f.is_file()):
        size = f.stat().st_size
        if size > budget:
            skipped.append(f.name)
            continue
        budget -= size
        client.log_artifact(run_id, str(f), artifact_path=f.parent.name if f.parent != run_dir else None)
    return skipped


def _start_parent(client: Any, exp_id: str, cfg: Mapping[str, Any], code_tags: Mapping[str, str], data_sha: str) -> str:
    """The sweep-level run: the sweep's settings as params; its children are the runs it does."""
    from mlflow.entities import Param
    from mlflow.tracking.context.registry import resolve_tags

    tags = resolve_tags({"stage": "mass_fewshot_sweep", "data_settings_sha256": data_sha, **code_tags})
    run_id = client.create_run(exp_id, run_name=f"sweep-{cfg['dataset']}-{data_sha[:8]}", tags=tags).info.run_id
    params = {
        "dataset": cfg["dataset"],
        "classes": ",".join(c.name for c in parse_classes(cfg["classes"])),
        "split_file": str(cfg["split_file"]),
        "preset": cfg["preset"],
        "spacing": cfg["spacing"],
        "roi_size": cfg["roi_size"],
        "shots": list(cfg["shots"]),
        "seeds": list(cfg["seeds"]),
        "modes": list(cfg["modes"]),
        "inits": ",".join(cfg["inits"]),
        "ft_overrides": json.dumps(dict(cfg.get("ft_overrides") or {}), sort_keys=True),
    }
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run_id


def _log_run(
    client: Any,
    exp_id: str,
    cfg: Mapping[str, Any],
    key: str,
    init: str,
    mode: str,
    shots: int,
    seed: int,
    result: Mapping[str, Any] | None,
    error: str | None,
    run_dir: Path,
    settings: Mapping[str, Any],
    sweep_tags: Mapping[str, str] | None = None,
    split_sha256: str = "",
) -> None:
    """One MLflow run for ``key``: params, tags, metrics and ``result.json``; FAILED with the error if any.

    ``sweep_tags``: tags shared by every run of the sweep (code version, parent run), computed once.
    """
    from mlflow.entities import Metric, Param, RunStatus
    from mlflow.tracking.context.registry import resolve_tags  # user, source, git commit, as mlflow.start_run

    seconds = float((result or {}).get("seconds") or 0.0)
    end_ms = int(time.time() * 1000)
    tags = resolve_tags(
        {
            **(sweep_tags or {}),
            "run_key": key,
            "stage": "mass_fewshot",
            "init_sha256": settings["init_sha256"],
            "data_settings_sha256": settings["data_settings_sha256"],
            "settings_sha256": digest(settings),
        }
    )
    # the run spans the work it records (a resumed result keeps its measured duration)
    run_id = client.create_run(exp_id, start_time=end_ms - int(seconds * 1000), run_name=key, tags=tags).info.run_id
    try:
        params = {
            "mode": mode,
            "shots": shots,
            "seed": seed,
            "init": init,
            "dataset": cfg["dataset"],
            "preset": cfg["preset"],
            "spacing": cfg["spacing"],
            "roi_size": cfg["roi_size"],
            "classes": ",".join(c.name for c in parse_classes(cfg["classes"])),
            "init_checkpoint": str(cfg["inits"].get(init) or ""),
            "modality": cfg.get("modality"),
            "split_file": str(cfg["split_file"]),
            "split_sha256": split_sha256,
            "ft_overrides": json.dumps(settings["ft_overrides"], sort_keys=True) if mode == "ft" else "",
        }
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        if error is not None or result is None:
            client.set_tag(run_id, "error", (error or "no result")[-4000:])
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
            return
        metrics: dict[str, float] = {
            "dice_mean": result["dice_mean"],
            "hd95_mean": result["hd95_mean"],
            "n_test": result["n_cases"],
            "n_failed": len(result["failed"]),
            "n_excluded": sum(len(v) for v in result["excluded"].values()),
            "shots": float(shots),  # numeric twins of the params: filter with metrics.shots >= 5
            "seed": float(seed),
            "seconds": seconds,
        }
        for name, v in result["dice"].items():
            metrics[f"dice_{name}"] = v
        for name, v in result["hd95"].items():
            metrics[f"hd95_{name}"] = v
        now = int(time.time() * 1000)
        finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in finite.items()])
        client.set_tag(run_id, "excluded", json.dumps(result["excluded"]))
        client.log_artifact(run_id, str(run_dir / "result.json"))
        skipped = _log_outputs(client, run_id, run_dir, float(cfg.get("artifact_max_mb", 50.0)))
        if skipped:
            client.set_tag(run_id, "artifacts_skipped", ", ".join(skipped)[:4000])
    except BaseException:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED), end_time=end_ms)
    logger.info("%s: run %s logged", key, run_id)


def run_sweep(cfg: Mapping[str, Any], out_dir: str | os.PathLike, tracking_uri: str | None = None) -> dict[str, Any]:
    """Run every missing combination of ``cfg`` (see ``configs/sweep.json``); returns a status per key.

    MLflow is used through an ``MlflowClient`` bound to ``tracking_uri``: no process-wide tracking
    URI or active experiment is set, so nothing leaks into later runs or subprocesses. Bad input
    (:func:`check_sweep`) is refused before any run.
    """
    check_sweep(cfg)
    out = Path(out_dir).resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    tracking_uri = tracking_uri or default_tracking_uri(out)
    return _run_sweep(tracking_client(tracking_uri), cfg, out, tracking_uri)


def _run_sweep(client: Any, cfg: Mapping[str, Any], out: Path, tracking_uri: str) -> dict[str, Any]:

    experiment = cfg.get("experiment", EXPERIMENT)
    exp_id = experiment_id(client, experiment, tracking_uri)
    done = finished_keys(client, exp_id)
    data = data_settings(cfg)  # the split file is hashed once per sweep, not per run
    data_sha = digest(data)
    code_tags = identity_code_tags(cfg.get("bundle_dir") or _BUNDLE)
    parent = _start_parent(client, exp_id, cfg, code_tags, data_sha)
    sweep_tags = {**code_tags, "mlflow.parentRunId": parent}
    status: dict[str, str] = {}
    cfg = {**cfg, "_tracking": {"tracking_uri": tracking_uri, "experiment": experiment, "parent_run_id": parent}}
    with sweep_parent(client, parent):
        fingerprints = {init: init_fingerprint(cfg, init) for init in cfg["inits"]}  # hashed once per file
        for init, mode, shots, seed in itertools.product(cfg["inits"], cfg["modes"], cfg["shots"], cfg["seeds"]):
            key = run_key(init, mode, shots, seed)
            settings = run_settings(cfg, mode, fingerprints[init], data_sha)
            settings_sha = digest(settings)
            if (key, settings_sha) in done:
                status[key] = "skipped (finished)"
                continue
            run_dir = out / "runs" / key
            result_file = run_dir / "result.json"
            old = json.loads(result_file.read_text()) if result_file.is_file() else None
            if old is not None and old.get("settings_sha256") != settings_sha:
                # a finished run of other settings (another dataset, split, FT setting...) keeps its files
                aside = run_dir.with_name(f"{key}.{old.get('settings_sha256') or 'earlier'}")
                if not aside.exists():
                    os.replace(run_dir, aside)
                    logger.info("%s: earlier run of other settings kept in %s", key, aside)
                else:
                    shutil.rmtree(run_dir)  # the same earlier run is already kept there
                old = None
            run_dir.mkdir(parents=True, exist_ok=True)
            error = None
            if old is not None and not old.get("failed"):
                result = old
                status[key] = "logged (result.json existed)"
            else:
                logger.info("%s: running", key)
                try:
                    result = run_one(cfg, init, mode, int(shots), int(seed), run_dir)
                    result.update({"settings_sha256": settings_sha, **settings})
                    atomic_json(result_file, result)
                    status[key] = f"done ({result['seconds']} s, mean Dice {result['dice_mean']:.3f})"
                    if result.get("failed"):  # test cases that could not be scored fail the run (kept in result.json)
                        image, reason = next(iter(result["failed"].items()))
                        error = f"{len(result['failed'])} test case(s) failed, first: {reason}"
                        status[key] = f"failed: {error}"
                        logger.error("%s failed: %s", key, error)
                except Exception as exc:  # one failing run never stops the sweep
                    result, error = None, error_message(exc)  # the file, not MONAI's transform wrapper
                    (run_dir / "error.txt").write_text(traceback.format_exc())
                    status[key] = f"failed: {error}"
                    logger.error("%s failed: %s", key, error)
            _log_run(
                client,
                exp_id,
                cfg,
                key,
                init,
                mode,
                int(shots),
                int(seed),
                result,
                error,
                run_dir,
                settings,
                sweep_tags,
                data["split_sha256"],
            )
    return write_sweep_status(out, tracking_uri, experiment, data_sha, parent, status)


def check_sweep(cfg: Mapping[str, Any]) -> None:
    """The sweep's classes, split, modes, shots and seeds, checked before any run (bad input: exit 2)."""
    from components.checks.errors import OptionError
    from components.checks.options import check_choice, check_int_at_least
    from components.data.loading import check_label_grid

    parse_classes(cfg["classes"])
    train = load_split(cfg["split_file"])["train"]
    for item in train:  # a support volume that cannot be read would fail every run drawing it
        check_label_grid(item["image"], item["label"])
    for mode in cfg.get("modes") or ():
        check_choice("sweep_modes", mode, MODES)
    for shots in cfg.get("shots") or ():
        if check_int_at_least("sweep_shots", shots, 1) > len(train):
            raise OptionError("sweep_shots", f"{shots} shots but {cfg['split_file']} has {len(train)} training volumes")
    for seed in cfg.get("seeds") or ():
        check_int_at_least("sweep_seeds", seed, 0)


def sweep_and_report(
    sweep: Mapping[str, Any],
    output_dir: str | os.PathLike,
    pretrained: str | os.PathLike | None = None,
    release: str | os.PathLike | None = None,
    tracking_uri: str | None = None,
    preset_from_checkpoint: bool = True,
    report: bool = True,
) -> dict[str, Any]:
    """Entry of the bundle config ``configs/sweep.json``: run the sweep ``sweep`` into ``output_dir``,
    then (``report``) write the report; returns the sweep status (plus ``report``, its path).

    ``sweep``: the keys of :func:`run_sweep` (``classes``, ``split_file``, ``shots``, ``seeds``, ``modes``,
    ``inits``, ...). ``pretrained``/``release``: checkpoint files adding the inits "pretrained" (our
    mass_pretrain model.pt) / "release" (authors' container); empty: that init is not run; a missing
    file fails its runs (recorded, the others go on). ``preset_from_checkpoint``: the preset of the first
    existing file among them replaces ``sweep["preset"]``.
    """
    from components.checks.options import check_exists, check_writable_dir

    check_writable_dir("output_dir", output_dir)
    check_exists("split_file", sweep.get("split_file"), "split file")
    cfg = dict(sweep)
    inits = dict(cfg.get("inits") or {"scratch": None})
    for name, path in (("pretrained", pretrained), ("release", release)):
        if path:
            inits[name] = str(Path(path).resolve())
    cfg["inits"] = inits
    given = [str(p) for p in (pretrained, release) if p and os.path.isfile(p)]
    if preset_from_checkpoint and given:
        found = preset_of_checkpoint(given[0])
        if found != cfg.get("preset"):
            logger.info("preset %s taken from %s (config said %s)", found, given[0], cfg.get("preset"))
        cfg["preset"] = found
    status = run_sweep(cfg, output_dir, tracking_uri)
    for key, s in status["runs"].items():
        logger.info("%s: %s", key, s)
    if report:
        from components.fewshot.report import write_report

        md = write_report(status["tracking_uri"], status["experiment"], output_dir, status["data_settings_sha256"])
        status["report"] = str(md)
        log_report(status, md, "dice_vs_shots")
    raise_if_failed(status, "sweep")
    return status
