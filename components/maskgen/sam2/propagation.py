"""3D propagation of 2D seed masks with SAM2's video predictor, from in-memory slices.

Two paths over the same model and frames:

- ``propagate_per_object``: the stock ``SAM2VideoPredictor`` API (``add_new_mask`` per object, then
  ``propagate_in_video`` forward and in reverse). The stock predictor runs objects one by one.
- ``propagate_batched``: all objects of one seed slice run as ONE batch through the same sam2 calls
  (``_run_single_frame_inference`` / ``_run_memory_encoder`` with ``batch_size=N``). Objects seeded on the
  same slice share their conditioning frame and tracking order, so batching changes nothing but the
  batch dimension; old per-frame memories that can no longer be attended to are dropped.

Frames never touch the disk: the seed axis of the ``(3, X, Y, Z)`` 0..255 volume becomes the time
axis, slices are resized to the model size and normalised like sam2's frame loader.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from components.io.maskset import SparseMask

__all__ = [
    "volume_frames",
    "make_state",
    "cache_backbone",
    "propagate_batched",
    "propagate_per_object",
    "FrameAccumulator",
]

_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def volume_frames(
    rgb: torch.Tensor, axis: int, image_size: int, device: torch.device | str = "cpu", chunk: int = 32
) -> tuple[torch.Tensor, int, int]:
    """Slices of a ``(3, X, Y, Z)`` volume (values 0..255) along ``axis`` as model frames.

    Returns:
        frames float32 ``(T, 3, S, S)`` on ``device`` (ImageNet-normalised), and the slice size ``H, W``.
    """
    vol = torch.as_tensor(rgb).float()
    perm = [axis + 1] + [a + 1 for a in range(3) if a != axis]
    vol = vol.permute(0, *perm)  # (3, T, H, W)
    n_frames, height, width = vol.shape[1:]
    out = torch.empty((n_frames, 3, image_size, image_size), dtype=torch.float32, device=device)
    for s in range(0, n_frames, chunk):
        x = vol[:, s : s + chunk].permute(1, 0, 2, 3).to(device) / 255.0
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        out[s : s + chunk] = (x - _MEAN.to(device)) / _STD.to(device)
    return out, int(height), int(width)


def make_state(
    predictor: Any, frames: torch.Tensor, height: int, width: int, offload_state_to_cpu: bool = False
) -> dict:
    """An inference state of the stock predictor built from in-memory ``frames`` (no JPEG folder)."""
    dev = predictor.device
    st: dict[str, Any] = {
        "images": frames,
        "num_frames": len(frames),
        "offload_video_to_cpu": frames.device.type == "cpu",
        "offload_state_to_cpu": offload_state_to_cpu,
        "video_height": height,
        "video_width": width,
        "device": dev,
        "storage_device": torch.device("cpu") if offload_state_to_cpu else dev,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }
    return st


@torch.inference_mode()
def cache_backbone(predictor: Any, state: dict, autocast: bool | None = None) -> None:
    """Run the image encoder once on every frame and keep the features in ``state["cached_features"]``.

    The stock predictor caches only the latest frame; with all frames cached, every seed, object chunk
    and direction (and both propagation paths) reuse one encoder pass per frame. The positional
    encodings are identical across frames and are shared. ``autocast`` (default: on CUDA only, as bf16
    matmuls are slow on CPUs without bf16 units) picks bf16 or fp32 for the encoder.
    """
    dev = torch.device(state["device"])
    use_ac = (dev.type == "cuda") if autocast is None else autocast
    cache: dict[int, Any] = {}
    pos = None
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_ac):
        for f in range(state["num_frames"]):
            img = state["images"][f].to(dev).float().unsqueeze(0)
            out = predictor.forward_image(img)
            if pos is None:
                pos = out["vision_pos_enc"]
            out["vision_pos_enc"] = pos
            cache[f] = (img, out)
    state["cached_features"] = cache


def _mask_inputs(predictor: Any, masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 1, S, S) float as ``add_new_mask`` prepares them."""
    size = predictor.image_size
    m = masks[:, None].float().to(predictor.device)
    if m.shape[-2:] != (size, size):
        m = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        m = (m >= 0.5).float()
    return m


def _to_video_res(predictor: Any, state: dict, pred: torch.Tensor) -> torch.Tensor:
    return predictor._get_orig_video_res_output(state, pred)[1]


@torch.inference_mode()
def propagate_batched(
    predictor: Any, state: dict, seed: int, masks: torch.Tensor, prune: bool = True
) -> Iterator[tuple[int, torch.Tensor]]:
    """Track ``N`` masks from frame ``seed`` forward to the end, then in reverse to frame 0, as one batch.

    Args:
        predictor: ``SAM2VideoPredictor``.
        state: from ``make_state`` (read-only use of frames and caches).
        seed: conditioning frame index.
        masks: bool ``(N, H, W)`` seed masks at slice resolution.
        prune: drop stored per-frame outputs outside the attention window (saves memory; same result).

    Yields:
        ``(frame_idx, logits)`` with logits float ``(N, 1, H, W)`` (> 0 is foreground); the seed frame first.
    """
    n = int(masks.shape[0])
    n_frames = state["num_frames"]
    out_dict: dict[str, dict[int, Any]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    cur, _ = predictor._run_single_frame_inference(
        inference_state=state,
        output_dict=out_dict,
        frame_idx=seed,
        batch_size=n,
        is_init_cond_frame=True,
        point_inputs=None,
        mask_inputs=_mask_inputs(predictor, masks),
        reverse=False,
        run_mem_encoder=False,
    )
    size = predictor.image_size
    high = F.interpolate(cur["pred_masks"].to(state["device"]), size=(size, size), mode="bilinear", align_corners=False)
    cur["maskmem_features"], cur["maskmem_pos_enc"] = predictor._run_memory_encoder(
        inference_state=state,
        frame_idx=seed,
        batch_size=n,
        high_res_masks=high,
        object_score_logits=cur["object_score_logits"],
        is_mask_from_pts=True,
    )
    out_dict["cond_frame_outputs"][seed] = cur
    yield seed, _to_video_res(predictor, state, cur["pred_masks"])
    window = (
        max(predictor.num_maskmem * predictor.memory_temporal_stride_for_eval, predictor.max_obj_ptrs_in_encoder) + 1
    )
    for reverse, order in ((False, range(seed + 1, n_frames)), (True, range(seed - 1, -1, -1))):
        for f in order:
            cur, pred = predictor._run_single_frame_inference(
                inference_state=state,
                output_dict=out_dict,
                frame_idx=f,
                batch_size=n,
                is_init_cond_frame=False,
                point_inputs=None,
                mask_inputs=None,
                reverse=reverse,
                run_mem_encoder=True,
            )
            out_dict["non_cond_frame_outputs"][f] = cur
            if prune:
                nc = out_dict["non_cond_frame_outputs"]
                for g in [g for g in nc if abs(g - f) > window and abs(g - seed) > window]:
                    del nc[g]
            yield f, _to_video_res(predictor, state, pred)


@torch.inference_mode()
def propagate_per_object(
    predictor: Any, state: dict, seed: int, masks: torch.Tensor
) -> Iterator[tuple[int, torch.Tensor]]:
    """Same contract as ``propagate_batched`` through the stock API (objects looped inside sam2).

    The seed frame is yielded once (the stock reverse pass yields it again; that repeat is skipped).
    """
    predictor.reset_state(state)
    for k in range(int(masks.shape[0])):
        predictor.add_new_mask(state, frame_idx=seed, obj_id=k, mask=masks[k])
    for f, _, logits in predictor.propagate_in_video(state, start_frame_idx=seed, reverse=False):
        yield f, logits
    for f, _, logits in predictor.propagate_in_video(state, start_frame_idx=seed, reverse=True):
        if f != seed:
            yield f, logits
    predictor.reset_state(state)


class FrameAccumulator:
    """Collect per-frame 2D masks of ``N`` objects into 3D ``SparseMask`` s on the ``(X, Y, Z)`` grid.

    Only the 2D bounding-box crop of each non-empty object slice is kept.
    """

    def __init__(self, n: int, axis: int, shape: tuple[int, int, int]) -> None:
        self.n, self.axis, self.shape = n, axis, shape
        self.frames: list[dict[int, tuple[int, int, np.ndarray]]] = [dict() for _ in range(n)]

    def add(self, frame_idx: int, logits: torch.Tensor) -> None:
        """``logits`` (N, 1, H, W) or bool (N, H, W) for one frame."""
        m = (logits > 0) if logits.dtype != torch.bool else logits
        m = m.reshape(self.n, *m.shape[-2:])
        rows, cols = m.any(2), m.any(1)
        nz = rows.any(1).cpu().numpy()
        if not nz.any():
            return
        m_np, rows_np, cols_np = m.cpu().numpy(), rows.cpu().numpy(), cols.cpu().numpy()
        for k in np.flatnonzero(nz):
            r, c = np.flatnonzero(rows_np[k]), np.flatnonzero(cols_np[k])
            self.frames[k][frame_idx] = (int(r[0]), int(c[0]), m_np[k, r[0] : r[-1] + 1, c[0] : c[-1] + 1])

    def mask(self, k: int) -> SparseMask | None:
        fr = self.frames[k]
        if not fr:
            return None
        ts = sorted(fr)
        r0 = min(fr[t][0] for t in ts)
        c0 = min(fr[t][1] for t in ts)
        r1 = max(fr[t][0] + fr[t][2].shape[0] for t in ts)
        c1 = max(fr[t][1] + fr[t][2].shape[1] for t in ts)
        crop = np.zeros((ts[-1] - ts[0] + 1, r1 - r0, c1 - c0), dtype=bool)
        for t in ts:
            r, c, a = fr[t]
            crop[t - ts[0], r - r0 : r - r0 + a.shape[0], c - c0 : c - c0 + a.shape[1]] = a
        crop = np.moveaxis(crop, 0, self.axis)
        lo = [0, 0, 0]
        others = [a for a in range(3) if a != self.axis]
        lo[self.axis], lo[others[0]], lo[others[1]] = ts[0], r0, c0
        return SparseMask(
            (lo[0], lo[1], lo[2], lo[0] + crop.shape[0], lo[1] + crop.shape[1], lo[2] + crop.shape[2]), crop
        )

    def masks(self) -> list[SparseMask | None]:
        return [self.mask(k) for k in range(self.n)]
