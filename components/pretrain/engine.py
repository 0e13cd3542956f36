"""Mask-guided pretraining on MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator``.

* :func:`prepare_incontext_batch`: batch dict -> ``(query, query_masks, (ref_image, ref_masks), {})``;
  MONAI's evaluator then calls ``inferer(query, network, ref_image, ref_masks)``.
* :class:`InContextTrainer`: ``SupervisedTrainer`` whose iteration segments the query view from the
  reference view (the task encoder's input); DiceBCE over valid mask channels; bf16 autocast; gradient
  clipping; optional ``GradScaler`` (fp16); a non-finite loss or gradient raises
  :class:`NonFiniteLossError` naming the iteration *before* the optimiser step, so weights and
  checkpoints stay the last good ones. It attaches the weight EMA (Ignite's ``EMAHandler``), the
  sampler's resume hook, and adds itself (iteration/epoch state) to its full-state checkpoint handlers.
* :func:`build_lr_scheduler`: warm-up + polynomial decay (paper, power 0.9) or one-cycle (release),
  stepped per iteration.
* :func:`resume_checkpoint`: the file ``--resume`` loads (newest periodic checkpoint) through MONAI's
  ``CheckpointLoader``.

EMA: ``ignite.handlers.EMAHandler(network, momentum=1 - decay)`` (release decay 0.99). It was checked
against the hand-written EMA it replaced (``ema = decay * ema + (1 - decay) * w`` after every optimiser
step, buffers copied): over 6 real steps of the tiny bundle all 556 tensors of the state dict were
bitwise equal, with the same keys (tests/pretrain/test_ema.py). ``torch.optim.swa_utils.AveragedModel``
with ``get_ema_multi_avg_fn`` was not taken: its first update copies the weights (the EMA starts
from the weights after step 1, max difference 3.7e-2 after 6 steps), it averages buffers or leaves
them, and its state dict adds ``module.`` and ``n_averaged``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from components.io.errors import InputError, OptionError, RunError

__all__ = [
    "NonFiniteLossError",
    "prepare_incontext_batch",
    "InContextTrainer",
    "unwrap_model",
    "warmup_poly_lambda",
    "build_lr_scheduler",
    "BestMetricState",
    "latest_checkpoint",
    "resume_checkpoint",
    "SampleLog",
]

logger = logging.getLogger(__name__)


class NonFiniteLossError(RunError, FloatingPointError):
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


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside ``DistributedDataParallel`` / ``DataParallel`` wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


class InContextTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` for in-context batches (``query_image``, ``query_masks``, ``ref_image``,
    ``ref_masks``, ``valid``); the loss is called as ``loss_function(logits, query_masks, valid=valid)``.

    Args:
        device, max_epochs, train_data_loader, network, optimizer, loss_function: as ``SupervisedTrainer``.
        grad_clip: max global gradient norm (``None``/0: off).
        amp: autocast the forward pass (bf16 by default; on CUDA and on CPU). MONAI's own ``amp``
            (fp16 on CUDA with its internal scaler) is not used.
        amp_dtype: ``"bfloat16"`` or ``"float16"`` (fp16 uses ``scaler``).
        scaler: a ``torch.amp.GradScaler`` (used only when enabled; saved in checkpoints either way).
        check_finite: raise :class:`NonFiniteLossError` on a NaN/inf loss or gradient norm.
        ema: an ``ignite.handlers.EMAHandler`` of ``network``; attached (updated after every iteration).
        best_metric_saver: the validator's key-metric ``CheckpointSaver`` (the one writing
            ``models/model.pt``). Its tracker (the best score so far and its file) is saved in the
            full-state checkpoints under ``"best_metric"`` and restored on resume, so the first
            validation after ``--resume`` replaces ``model.pt`` only if it beats the best before the
            kill. Checkpoints written without the key still load (the tracker starts empty).
        state_key: the trainer's key in full training-state checkpoints: every handler of
            ``train_handlers`` whose ``save_dict`` / ``load_dict`` holds ``optimizer`` (MONAI's
            ``CheckpointSaver`` / ``CheckpointLoader`` of the whole state) gets the trainer (iteration,
            epoch) under this key, since a config cannot reference the trainer from its own handlers.
            Weights-only loaders (no optimizer) are left alone.
        kwargs: other ``SupervisedTrainer`` arguments (``train_handlers``, ``inferer``, ``epoch_length`` ...).

    A sampler of ``train_data_loader`` with an ``attach`` method (``TwoViewSampler``: skips the samples
    already seen when a run resumes mid-epoch) is attached as well.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable[..., torch.Tensor],
        grad_clip: float | None = 1.0,
        amp: bool = True,
        amp_dtype: str = "bfloat16",
        scaler: torch.amp.GradScaler | None = None,
        check_finite: bool = True,
        ema: Any = None,
        state_key: str = "trainer",
        best_metric_saver: Any = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("prepare_batch", prepare_incontext_batch)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            amp=False,
            **kwargs,
        )
        self.grad_clip, self.check_finite = grad_clip, bool(check_finite)
        self.autocast, self.amp_dtype = bool(amp), getattr(torch, amp_dtype)
        self.grad_scaler = scaler
        self.ema = ema
        if ema is not None:
            ema.attach(self)
        attach_sampler = getattr(getattr(train_data_loader, "sampler", None), "attach", None)
        if callable(attach_sampler):
            attach_sampler(self)
        best = BestMetricState(best_metric_saver) if best_metric_saver is not None else None
        for handler in kwargs.get("train_handlers") or ():
            for attr in ("save_dict", "load_dict"):
                objects = getattr(handler, attr, None)
                if isinstance(objects, dict) and any(v is optimizer for v in objects.values()):
                    objects[state_key] = self  # MONAI/Ignite read these dicts when saving/loading
                    if best is not None and (attr == "save_dict" or _holds_key(handler, BestMetricState.KEY)):
                        objects[BestMetricState.KEY] = best

    def _handle_exception(self, e: BaseException) -> None:
        """Our errors (a non-finite loss, bad input) leave as they are: no traceback from each
        ``EXCEPTION_RAISED`` handler (MONAI's ``StatsHandler`` logs one, then re-raises)."""
        if isinstance(e, (RunError, InputError)):
            raise e
        super()._handle_exception(e)

    def _fail(self, what: str, value: float) -> None:
        raise NonFiniteLossError(
            f"non-finite {what} ({value}) at iteration {self.state.iteration} (epoch {self.state.epoch}); "
            "training stopped before the optimizer step, the last saved checkpoint is the last good one"
        )

    def _iteration(self, engine: Any, batchdata: dict[str, Any]) -> dict:
        """One step: forward (autocast), loss, backward, clip, NaN guard, optimiser step."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        device = engine.state.device
        query, target, (ref_image, ref_masks), _ = engine.prepare_batch(
            batchdata, device, engine.non_blocking, **engine.to_kwargs
        )
        valid = _t(batchdata["valid"]).to(device=device, dtype=torch.bool)
        net, opt = engine.network, engine.optimizer
        net.train()
        opt.zero_grad(set_to_none=True)
        dev_type = torch.device(device).type if device is not None else "cpu"
        engine.state.output = out = {Keys.IMAGE: query, Keys.LABEL: target}
        with torch.autocast(device_type=dev_type, dtype=self.amp_dtype, enabled=self.autocast):
            logits = engine.inferer(query, net, ref_image, ref_masks)
        out[Keys.PRED] = logits
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = engine.loss_function(logits.float(), target, valid=valid)
        if self.check_finite and not bool(torch.isfinite(loss)):
            self._fail("loss", float(loss))
        out[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        scaler = self.grad_scaler if self.grad_scaler is not None and self.grad_scaler.is_enabled() else None
        (scaler.scale(loss) if scaler else loss).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if scaler:
            scaler.unscale_(opt)
        if self.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(net.parameters(), float(self.grad_clip))
            if self.check_finite and not bool(torch.isfinite(norm)) and scaler is None:
                opt.zero_grad(set_to_none=True)
                self._fail("gradient norm", float(norm))
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        out[Keys.PRED], out[Keys.LOSS] = logits.detach(), loss.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # MONAI decollates and post-processes here
        return engine.state.output


class BestMetricState:
    """``state_dict`` / ``load_state_dict`` of a key-metric ``CheckpointSaver``'s tracker (Ignite
    ``Checkpoint._saved``: the ``(score, filename)`` of the best model so far), for full-state checkpoints."""

    KEY = "best_metric"

    def __init__(self, saver: Any) -> None:
        self.saver = saver
        ck = self._checkpoint()
        fixed = getattr(getattr(ck, "save_handler", None), "filename", None)
        if ck is not None and fixed:  # e.g. models/model.pt: replaced atomically, never deleted first
            ck.save_handler = AtomicFixedSaver(ck.save_handler.dirname, fixed)

    def _checkpoint(self) -> Any:
        return getattr(self.saver, "_key_metric_checkpoint", None)

    def state_dict(self) -> dict[str, Any]:
        ck = self._checkpoint()
        saved = [] if ck is None else [[float(p), str(f)] for p, f in ck.state_dict()["_saved"]]
        return {"saved": saved}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        ck = self._checkpoint()
        if ck is not None:
            ck.load_state_dict({"_saved": [(float(p), str(f)) for p, f in state.get("saved", [])]})
            logger.info(f"best-metric tracker restored: {ck.state_dict()['_saved']}")


class AtomicFixedSaver(BaseSaveHandler):
    """Ignite save handler for a fixed file name (``model.pt``): each save writes a temp file and renames
    it over the old one, and ``remove`` does nothing. Ignite's ``Checkpoint`` removes the previous best
    before saving the new one; with MONAI's non-atomic ``DiskSaver`` a kill between the two left no
    ``model.pt`` at all, and one during the write a truncated one."""

    def __init__(self, dirname: str | os.PathLike, filename: str) -> None:
        self.dirname, self.filename = Path(dirname), filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        from components.io.atomic import atomic_write

        atomic_write(self.dirname / self.filename, lambda tmp: torch.save(checkpoint, tmp))

    def remove(self, filename: str) -> None:
        """Nothing to remove: the next save replaces the file in one rename."""


def _holds_key(loader: Any, key: str) -> bool:
    """Whether the checkpoint a ``CheckpointLoader`` will load has ``key`` (False if it cannot be read now)."""
    path = getattr(loader, "load_path", None)
    if not path or not os.path.isfile(path):
        return False
    try:
        return key in torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return False


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


class _OneCycleLR(torch.optim.lr_scheduler.OneCycleLR):
    """``OneCycleLR`` that keeps the horizon it was built with when a checkpoint is loaded."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        horizon = {k: self.__dict__[k] for k in ("total_steps", "_schedule_phases")}
        super().load_state_dict(state_dict)
        self.__dict__.update(horizon)


class _LambdaLR(torch.optim.lr_scheduler.LambdaLR):
    """``LambdaLR`` that keeps the LR function (and its horizon) it was built with when a checkpoint is loaded."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({**state_dict, "lr_lambdas": [None] * len(self.lr_lambdas)})


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    total_steps: int,
    warmup: float = 0.05,
    power: float = 0.9,
    div_factor: float = 25.0,
    final_div_factor: float = 1000.0,
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-iteration schedule over ``total_steps`` optimiser steps.

    ``"onecycle"`` (the release's default): torch's ``OneCycleLR`` from ``lr / div_factor`` up to the
    optimiser's ``lr`` over the fraction ``warmup``, cosine down to ``lr / div_factor / final_div_factor``
    (release: 5 %, 25, 1000). ``"poly"`` (the paper's text): linear warm-up over ``warmup``, then
    ``(1 - progress) ** power``.

    Loading a checkpoint restores the step count, not the horizon: a run resumed with a larger
    ``--max_epochs`` continues at its step on the schedule over the new ``total_steps``.
    """
    total_steps = max(1, int(total_steps))
    if name == "poly":
        return _LambdaLR(optimizer, _WarmupPoly(total_steps, round(warmup * total_steps), power))
    if name == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return _OneCycleLR(
            optimizer,
            max_lr=max_lr,
            total_steps=total_steps,
            pct_start=max(warmup, 1e-3),
            div_factor=div_factor,
            final_div_factor=final_div_factor,
        )
    raise ValueError(f"lr schedule must be 'poly' or 'onecycle', got {name!r}")


def latest_checkpoint(folder: str | os.PathLike, pattern: str = "*checkpoint*.pt") -> str | None:
    """Newest file matching ``pattern`` in ``folder`` (by modification time), or None."""
    files = sorted(Path(folder).glob(pattern), key=lambda p: p.stat().st_mtime) if Path(folder).is_dir() else []
    return str(files[-1]) if files else None


def resume_checkpoint(
    ckpt_dir: str | os.PathLike, ckpt_path: str | None = None, finished: str | os.PathLike | None = None
) -> str | None:
    """The checkpoint a resumed run loads: ``ckpt_path`` if given, else the newest one of ``ckpt_dir``.

    A newest checkpoint that cannot be read (truncated by a kill, corrupt) is skipped with a warning
    naming it and the newest readable one is used. Refused (``CheckpointError`` / ``OptionError``)
    rather than starting from scratch: an unreadable ``ckpt_path``, a folder whose every checkpoint is
    broken, no checkpoint while ``finished`` (the best model) exists. With no checkpoint and no
    finished model it logs a warning and returns None (the run starts from scratch).
    """
    from components.io.checks import newest_readable_checkpoint, readable_checkpoint

    if ckpt_path:
        readable_checkpoint(ckpt_path, what="resume checkpoint")
    path = ckpt_path or newest_readable_checkpoint(ckpt_dir)
    if path is None and finished and os.path.isfile(finished):
        raise OptionError(
            "resume",
            f"no checkpoint in {ckpt_dir} to resume from, but {finished} holds a finished model; "
            "write to a new --ckpt_dir, or start again over it with --resume False --overwrite True",
        )
    if path is None:
        logger.warning(f"resume requested but no checkpoint in {ckpt_dir}; starting from scratch")
    else:
        logger.info(f"resuming from {path}")
    return path


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
