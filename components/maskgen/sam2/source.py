"""SAM2 mask source: 2D automatic masks on seed slices, propagated to 3D (paper §3.2, §6.1).

Same interface as the other sources (``components.maskgen.sources``): writes ``d["masks"]`` (list of
``SparseMask`` on the RAS grid) and ``d["mask_provenance"]``; adds phase timings to ``d["timings"]``.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from components.maskgen.postprocess import scaled_min_size
from components.maskgen.sam2.masks2d import auto_masks_2d, make_mask_generator
from components.maskgen.sam2.model import autocast_ctx, build_sam2_predictor
from components.maskgen.sam2.propagation import (
    FrameAccumulator,
    cache_backbone,
    make_state,
    propagate_batched,
    propagate_per_object,
    volume_frames,
)

__all__ = ["SAM2MaskSourced"]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class SAM2MaskSourced(MapTransform):
    """Generate 3D masks with SAM2 for the 3-channel volume ``d[key]`` (``keys``: one key, default ``"rgb"``)
    and the plan ``d[plan_key]``; writes ``d[masks_key]`` (list of ``SparseMask``), ``d[provenance_key]``.

    Args:
        keys: the key of the 3-channel volume (one key: the slice plan belongs to that volume).
        sam2_config: sam2 config name (release: ``configs/sam2.1/sam2.1_hiera_l.yaml``).
        sam2_checkpoint: SAM2 checkpoint; None gives random weights (tests/benchmarks; then set the
            ``amg_params`` thresholds to 0 or no mask survives).
        device: torch device string.
        image_size: model input size (None: the config's 1024).
        amg_params: ``SAM2AutomaticMaskGenerator`` parameters over the release defaults.
        min_area_px / reference_spacing_2d: minimum 2D mask area in pixels at the given in-plane spacing
            (release: 500 px on abdomen CT), scaled to the slice spacing.
        max_masks_per_slice: keep the best masks of each slice (release 70).
        objects_per_batch: objects propagated together (the release adds 16-80 per state).
        batched: batch the objects of a seed slice (True) or use the stock per-object loop (False).
        autocast: bf16 autocast for propagation (required by sam2's bf16 memory; also on CPU).
        amg_autocast: bf16 autocast for the 2D generator; None: on CUDA only.
        cache_features: encode every frame once per volume and axis (see ``cache_backbone``).
        offload_state_to_cpu: keep tracking memories on the CPU (less GPU memory, slower).
        predictor: an already built ``SAM2VideoPredictor`` (e.g. the bundle's ``network_def``); None builds
            one from ``sam2_config`` / ``sam2_checkpoint`` on first use.
    """

    def __init__(
        self,
        keys: KeysCollection = "rgb",
        sam2_config: str = "configs/sam2.1/sam2.1_hiera_l.yaml",
        sam2_checkpoint: str | None = None,
        device: str | torch.device = "cpu",
        image_size: int | None = None,
        amg_params: Mapping[str, Any] | None = None,
        min_area_px: float = 500,
        reference_spacing_2d: Sequence[float] = (0.75, 0.75),
        max_masks_per_slice: int = 70,
        objects_per_batch: int = 64,
        batched: bool = True,
        autocast: bool = True,
        amg_autocast: bool | None = None,
        cache_features: bool = True,
        offload_state_to_cpu: bool = False,
        plan_key: str = "slice_plan",
        masks_key: str = "masks",
        provenance_key: str = "mask_provenance",
        seed: int = 0,
        predictor: Any = None,
    ) -> None:
        self.sam2_config, self.sam2_checkpoint = sam2_config, sam2_checkpoint
        self.device = torch.device(device)
        self.image_size, self.amg_params = image_size, dict(amg_params or {})
        self.min_area_px, self.reference_spacing_2d = min_area_px, tuple(reference_spacing_2d)
        self.max_masks_per_slice, self.objects_per_batch = max_masks_per_slice, objects_per_batch
        self.batched, self.autocast, self.cache_features = batched, autocast, cache_features
        self.amg_autocast = (self.device.type == "cuda") if amg_autocast is None else amg_autocast
        self.offload_state_to_cpu = offload_state_to_cpu
        super().__init__(keys)
        if len(self.keys) != 1:
            raise ValueError(
                f"SAM2MaskSourced takes one volume key (its slice plan is in {plan_key!r}), got {self.keys}"
            )
        self.plan_key = plan_key
        self.masks_key, self.provenance_key, self.seed = masks_key, provenance_key, seed
        self._predictor: Any = predictor
        self._generator: Any = make_mask_generator(predictor, self.amg_params) if predictor is not None else None

    @property
    def predictor(self) -> Any:
        """The SAM2 video predictor, built on first use."""
        if self._predictor is None:
            self._predictor = build_sam2_predictor(
                self.sam2_config, self.sam2_checkpoint, self.device, self.image_size, seed=self.seed
            )
            self._generator = make_mask_generator(self._predictor, self.amg_params)
        return self._predictor

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        pred = self.predictor
        rgb = torch.as_tensor(d[self.keys[0]]).float()
        shape = tuple(rgb.shape[1:])
        tm: dict[str, float] = dict(d.get("timings") or {})
        masks: list = []
        prov: list[dict] = []
        n2d = 0
        for plan in d[self.plan_key]:
            axis, seeds, spacing = int(plan["axis"]), list(plan["seeds"]), plan["spacing"]
            inplane = [spacing[a] for a in range(3) if a != axis]
            min_area = scaled_min_size(self.min_area_px, inplane, self.reference_spacing_2d)
            t0 = time.perf_counter()
            frames, height, width = volume_frames(rgb, axis, int(pred.image_size), self.device)
            state = make_state(pred, frames, height, width, self.offload_state_to_cpu)
            if self.cache_features:
                cache_backbone(pred, state)
            _sync(self.device)
            tm["encode_frames_s"] = tm.get("encode_frames_s", 0.0) + time.perf_counter() - t0
            for s in seeds:
                t0 = time.perf_counter()
                sl = np.take(rgb.numpy(), s, axis=axis + 1)  # (3, H, W)
                sl = np.ascontiguousarray(np.clip(np.rint(sl), 0, 255).astype(np.uint8).transpose(1, 2, 0))
                with autocast_ctx(self.device, self.amg_autocast):
                    found = auto_masks_2d(self._generator, sl, min_area, self.max_masks_per_slice)
                _sync(self.device)
                tm["masks_2d_s"] = tm.get("masks_2d_s", 0.0) + time.perf_counter() - t0
                n2d += len(found)
                if not found:
                    continue
                t0 = time.perf_counter()
                for c in range(0, len(found), self.objects_per_batch):
                    chunk = found[c : c + self.objects_per_batch]
                    seg = torch.from_numpy(np.stack([m["segmentation"] for m in chunk]))
                    acc = FrameAccumulator(len(chunk), axis, shape)  # type: ignore[arg-type]
                    run = propagate_batched if self.batched else propagate_per_object
                    with autocast_ctx(self.device, self.autocast):
                        for f, logits in run(pred, state, s, seg):
                            acc.add(f, logits)
                    for m, sp in zip(chunk, acc.masks()):
                        if sp is None:
                            continue
                        masks.append(sp)
                        prov.append(
                            {
                                "source": "sam2",
                                "axis": axis,
                                "seed_slice": int(s),
                                "score": float(m["predicted_iou"]),
                                "stability": float(m["stability_score"]),
                                "area_2d": int(m["area"]),
                            }
                        )
                _sync(self.device)
                tm["propagation_s"] = tm.get("propagation_s", 0.0) + time.perf_counter() - t0
            del state, frames
        d[self.masks_key], d[self.provenance_key] = masks, prov
        d["timings"] = tm
        d["n_masks_2d"] = n2d
        return d
