"""Mask-guided pretraining on MONAI's ``SupervisedTrainer``: the in-context iteration and its batch layout.

* :func:`prepare_incontext_batch`: batch dict -> ``(query, query_masks, (ref_image, ref_masks), {})``;
  MONAI's evaluator then calls ``inferer(query, network, ref_image, ref_masks)``.
* :class:`InContextTrainer`: ``SupervisedTrainer`` whose iteration segments the query view from the
  reference view (the task encoder's input); DiceBCE over valid mask channels; bf16 autocast; gradient
  clipping; optional ``GradScaler`` (fp16); a non-finite loss or gradient raises
  :class:`NonFiniteLossError` naming the iteration *before* the optimiser step, so weights and
  checkpoints stay the last good ones. It attaches the weight EMA (Ignite's ``EMAHandler``), the
  sampler's resume hook, and adds itself (iteration/epoch state) to its full-state checkpoint handlers.

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
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from components.checks.errors import InputError, RunError
from components.pretrain.handlers import BestMetricState, holds_key

__all__ = ["NonFiniteLossError", "prepare_incontext_batch", "unwrap_model", "InContextTrainer"]


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
                    if best is not None and (attr == "save_dict" or holds_key(handler, BestMetricState.KEY)):
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
