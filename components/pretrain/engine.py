"""Pieces that plug mask-guided pretraining into MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator``.

* :func:`prepare_incontext_batch`: batch dict -> ``(query, query_masks, (ref_image, ref_masks), {})``;
  MONAI's evaluator then calls ``inferer(query, network, ref_image, ref_masks)``.
* :class:`PretrainIteration`: the trainer's ``iteration_update``: the reference view feeds the task
  encoder, the query view is segmented; DiceBCE over valid mask channels; bf16 autocast; gradient
  clipping; a non-finite loss or gradient raises :class:`NonFiniteLossError` naming the iteration
  *before* the optimiser step, so weights and checkpoints stay the last good ones.
* :func:`build_lr_scheduler`: warm-up + polynomial decay (paper, power 0.9) or one-cycle (release),
  stepped per iteration.
* :class:`ResumeFromLatest`: ``--resume`` loads the newest periodic checkpoint (model, EMA,
  optimizer, scheduler, scaler, trainer state) through MONAI's ``CheckpointLoader``.
* :class:`MLflowArtifacts`: logs files (final weights) to the run of an attached ``MLFlowHandler``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointLoader
from monai.utils import CommonKeys as Keys

__all__ = [
    "NonFiniteLossError",
    "prepare_incontext_batch",
    "PretrainIteration",
    "warmup_poly_lambda",
    "build_lr_scheduler",
    "latest_checkpoint",
    "ResumeFromLatest",
    "Attach",
    "CheckpointWithEngine",
    "SampleLog",
    "MLflowArtifacts",
]

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss (or gradient norm) became NaN/inf; the message names the iteration and epoch."""


def _t(x: Any) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def prepare_incontext_batch(
    batchdata: Mapping[str, Any], device: torch.device | str | None = None, non_blocking: bool = False, **kwargs: Any
) -> tuple:
    """``(query [B,1,*], query_masks float [B,M,*], (ref_image [B,1,*], ref_masks float [B,M,*]), {})``."""

    def mv(k: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        x = _t(batchdata[k]).to(device=device, non_blocking=non_blocking)
        return x.to(dtype) if dtype is not None else x

    return (
        mv("query_image", torch.float32),
        mv("query_masks", torch.float32),
        (mv("ref_image", torch.float32), mv("ref_masks", torch.float32)),
        {},
    )


class PretrainIteration:
    """``iteration_update`` for ``SupervisedTrainer`` (uses its network, optimizer and loss_function).

    Args:
        grad_clip: max global gradient norm (``None``/0: off).
        amp: autocast the forward pass (bf16 by default; on CUDA and on CPU).
        amp_dtype: ``"bfloat16"`` or ``"float16"`` (fp16 uses ``scaler``).
        scaler: a ``torch.amp.GradScaler`` (enabled only for fp16; saved in checkpoints either way).
        check_finite: raise :class:`NonFiniteLossError` on a NaN/inf loss or gradient norm.
    """

    def __init__(
        self,
        grad_clip: float | None = 1.0,
        amp: bool = True,
        amp_dtype: str = "bfloat16",
        scaler: torch.amp.GradScaler | None = None,
        check_finite: bool = True,
    ) -> None:
        self.grad_clip, self.amp, self.check_finite = grad_clip, bool(amp), bool(check_finite)
        self.amp_dtype = getattr(torch, amp_dtype)
        self.scaler = scaler

    def _fail(self, engine: Any, what: str, value: float) -> None:
        raise NonFiniteLossError(
            f"non-finite {what} ({value}) at iteration {engine.state.iteration} (epoch {engine.state.epoch}); "
            "training stopped before the optimizer step, the last saved checkpoint is the last good one"
        )

    def __call__(self, engine: Any, batchdata: Mapping[str, Any]) -> dict[str, Any]:
        device = engine.state.device
        query, target, (ref_image, ref_masks), _ = prepare_incontext_batch(batchdata, device, engine.non_blocking)
        valid = _t(batchdata["valid"]).to(device=device, dtype=torch.bool)
        net, opt = engine.network, engine.optimizer
        net.train()
        opt.zero_grad(set_to_none=True)
        dev_type = torch.device(device).type if device is not None else "cpu"
        engine.state.output = out = {Keys.IMAGE: query, Keys.LABEL: target}
        with torch.autocast(device_type=dev_type, dtype=self.amp_dtype, enabled=self.amp):
            logits = net(query, ref_image, ref_masks)
        out[Keys.PRED] = logits
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = engine.loss_function(logits.float(), target, valid=valid)
        if self.check_finite and not bool(torch.isfinite(loss)):
            self._fail(engine, "loss", float(loss))
        out[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        scaler = self.scaler if self.scaler is not None and self.scaler.is_enabled() else None
        (scaler.scale(loss) if scaler else loss).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if scaler:
            scaler.unscale_(opt)
        if self.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(net.parameters(), float(self.grad_clip))
            if self.check_finite and not bool(torch.isfinite(norm)) and scaler is None:
                opt.zero_grad(set_to_none=True)
                self._fail(engine, "gradient norm", float(norm))
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        out[Keys.PRED], out[Keys.LOSS] = logits.detach(), loss.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # MONAI decollates and post-processes here
        return engine.state.output


def warmup_poly_lambda(step: int, total_steps: int, warmup_steps: int, power: float = 0.9) -> float:
    """LR factor: linear warm-up to 1 over ``warmup_steps``, then ``(1 - progress) ** power`` to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, 1.0 - progress) ** power


class _WarmupPoly:
    """Picklable LR lambda (a bound callable object, saved with the scheduler state)."""

    def __init__(self, total_steps: int, warmup_steps: int, power: float) -> None:
        self.total_steps, self.warmup_steps, self.power = int(total_steps), int(warmup_steps), float(power)

    def __call__(self, step: int) -> float:
        return warmup_poly_lambda(step, self.total_steps, self.warmup_steps, self.power)


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, name: str, total_steps: int, warmup: float = 0.05, power: float = 0.9
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration schedule: ``"poly"`` (warm-up fraction ``warmup`` + poly decay) or ``"onecycle"``."""
    total_steps = max(1, int(total_steps))
    if name == "poly":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, _WarmupPoly(total_steps, round(warmup * total_steps), power)
        )
    if name == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=max_lr, total_steps=total_steps + 1, pct_start=max(warmup, 1e-3)
        )
    raise ValueError(f"lr schedule must be 'poly' or 'onecycle', got {name!r}")


def latest_checkpoint(folder: str | os.PathLike, pattern: str = "*checkpoint*.pt") -> str | None:
    """Newest file matching ``pattern`` in ``folder`` (by modification time), or None."""
    files = sorted(Path(folder).glob(pattern), key=lambda p: p.stat().st_mtime) if Path(folder).is_dir() else []
    return str(files[-1]) if files else None


class ResumeFromLatest:
    """When ``enabled``, load the newest checkpoint of ``ckpt_dir`` into ``load_dict`` at the start of a run.

    The engine it is attached to is added to ``load_dict`` as ``engine_key`` (its iteration/epoch state;
    a config cannot reference the trainer from its own handler list). ``ckpt_path`` (explicit file)
    wins over the folder scan. Without a checkpoint it logs and starts fresh.
    """

    def __init__(
        self,
        ckpt_dir: str,
        load_dict: dict,
        enabled: bool = False,
        ckpt_path: str | None = None,
        map_location: Any = None,
        engine_key: str | None = "trainer",
    ) -> None:
        self.ckpt_dir, self.load_dict, self.enabled = ckpt_dir, dict(load_dict), bool(enabled)
        self.ckpt_path, self.map_location, self.engine_key = ckpt_path, map_location, engine_key

    def attach(self, engine: Any) -> None:
        if not self.enabled:
            return
        if self.engine_key:
            self.load_dict[self.engine_key] = engine
        path = self.ckpt_path or latest_checkpoint(self.ckpt_dir)
        if path is None:
            logger.warning(f"resume requested but no checkpoint in {self.ckpt_dir}; starting from scratch")
            return
        logger.info(f"resuming from {path}")
        CheckpointLoader(load_path=path, load_dict=self.load_dict, map_location=self.map_location).attach(engine)


class Attach:
    """Handler-list entry for an object defined elsewhere in the config (``{"_target_": ..., "handler": "@ema"}``:
    MONAI's property checks expect every ``train#handlers`` entry to be a component dict)."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def attach(self, engine: Any) -> None:
        self.handler.attach(engine)


class CheckpointWithEngine:
    """Attach a MONAI ``CheckpointSaver`` after adding the engine (iteration/epoch state) to its ``save_dict``."""

    def __init__(self, saver: Any, engine_key: str = "trainer") -> None:
        self.saver, self.engine_key = saver, engine_key

    def attach(self, engine: Any) -> None:
        self.saver.save_dict[self.engine_key] = engine  # the saver's ignite Checkpoints share this dict
        self.saver.attach(engine)


class SampleLog:
    """Append the sample ids of every training batch to ``path`` (``{rank}`` is filled in); no-op if ``path`` is empty.

    A diagnostic for multi-process runs: each rank should see different ids.
    """

    def __init__(self, path: str | None = None) -> None:
        self.path = path

    def attach(self, engine: Any) -> None:
        if not self.path:
            return
        import torch.distributed as dist
        from ignite.engine import Events

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        path = Path(str(self.path).format(rank=rank))
        path.parent.mkdir(parents=True, exist_ok=True)

        def _log(e: Any) -> None:
            ids = e.state.batch["index"] if isinstance(e.state.batch, Mapping) else [b["index"] for b in e.state.batch]
            with open(path, "a") as f:
                f.write(" ".join(str(int(i)) for i in torch.as_tensor(ids).view(-1).tolist()) + "\n")

        engine.add_event_handler(Events.ITERATION_STARTED, _log)


class MLflowArtifacts:
    """At the end of training, log ``params``, ``paths`` (files or folders) and the newest match of each glob in
    ``newest`` (e.g. the executed config) to the run of each attached ``MLFlowHandler``.

    Does nothing when no ``MLFlowHandler`` is attached (i.e. without ``--tracking mlflow``).
    """

    def __init__(
        self, paths: Sequence[str] = (), newest: Sequence[str] = (), params: Mapping[str, Any] | None = None
    ) -> None:
        self.paths, self.newest, self.params = [str(p) for p in paths], [str(g) for g in newest], dict(params or {})

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self._log)

    def _log(self, engine: Any) -> None:
        import glob

        from monai.handlers import MLFlowHandler

        handlers = {
            id(h.__self__): h.__self__
            for ev in engine._event_handlers.values()
            for h, *_ in ev
            if isinstance(getattr(h, "__self__", None), MLFlowHandler)
        }
        found = [max(m, key=os.path.getmtime) for m in (glob.glob(g) for g in self.newest) if m]
        for h in handlers.values():
            run = getattr(h, "cur_run", None)
            if run is None:  # run already closed or never started
                continue
            rid = run.info.run_id
            for k, v in self.params.items():
                h.client.log_param(rid, k, str(v)[:500])
            for p in self.paths + found:
                if os.path.isdir(p):
                    h.client.log_artifacts(rid, p)
                elif os.path.isfile(p):
                    h.client.log_artifact(rid, p)
