"""Mask generation over a datalist as a MONAI ``Workflow`` (an Ignite engine; one iteration = one volume).

For every volume: preprocessing (load, check, RAS, intensity mapping, slice plan) -> mask source (SAM2,
SLIC or label map) -> post-processing -> ``<output_dir>/<case>.mset`` (atomic). The engine is

- resumable: a volume whose mask set is complete and valid (opens, checksums pass, same source image)
  is skipped; a partial output (leftover temp file, truncated or corrupt file) is redone;
- shardable: ``shard="i/n"`` or torchrun's ``RANK``/``WORLD_SIZE`` pick every n-th volume, so each
  volume is written by exactly one worker;
- fault tolerant: a failing volume is recorded with its reason in the failures file and the others
  continue; ``finish()`` prints a summary and exits non-zero if any volume failed.

Per-volume statistics and the run summary are kept in ``engine.state.metrics`` so MONAI's
``MLFlowHandler`` (``--tracking mlflow``) logs them at the end of the epoch.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.engines import Workflow

from components.checks.errors import OptionError, VolumeError, root_cause
from components.io.atomic import atomic_json
from components.io.maskset import MaskSet, MaskSetError, write_maskset
from components.io.naming import volume_stem

__all__ = ["parse_shard", "check_unique_names", "shard_datalist", "output_is_complete", "MaskGenWorkflow"]

logger = logging.getLogger("mass.maskgen")


def parse_shard(shard: str | None = None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)``; None -> torchrun's ``(RANK, WORLD_SIZE)`` or ``(0, 1)``."""
    if shard:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
        if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
            raise OptionError("shard", f"must look like 'i/n' with 0 <= i < n, got {shard!r}")
        return int(m.group(1)), int(m.group(2))
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def check_unique_names(datalist: Sequence[dict], suffix: str = ".mset") -> None:
    """Raise :class:`VolumeError` if two entries would write the same ``<stem><suffix>`` output.

    Mask sets are named by the image's stem (what pretraining pairs them by), so ``a/t1.nii.gz``
    and ``b/t1.nii.gz`` would overwrite each other. We refuse rather than rename: a renamed output
    would no longer pair with its volume. The message names both files.
    """
    seen: dict[str, str] = {}
    for d in datalist:
        image = str(d["image"])
        stem = volume_stem(image)
        if stem in seen and os.path.realpath(seen[stem]) != os.path.realpath(image):
            raise VolumeError(
                image,
                f"same mask-set name '{stem}{suffix}' as {seen[stem]}; give the volumes unique file names "
                "(or run them with separate output folders)",
            )
        seen.setdefault(stem, image)


def shard_datalist(datalist: Sequence[dict], shard: str | None = None) -> list[dict]:
    """Entries ``rank, rank + world, ...`` of the datalist sorted by image path (disjoint across ranks).

    Refuses a datalist in which two volumes share a stem (:func:`check_unique_names`).
    """
    rank, world = parse_shard(shard)
    check_unique_names(datalist)
    items = sorted(datalist, key=lambda d: str(d["image"]))
    return [dict(d) for k, d in enumerate(items) if k % world == rank]


def _image_sig(path: str) -> dict:
    try:
        st = os.stat(path)
        return {"image": str(path), "image_bytes": int(st.st_size)}
    except OSError:
        return {"image": str(path)}


def output_is_complete(out: Path, image: str, deep: bool = True) -> bool:
    """True if ``out`` is a valid mask set of ``image`` (same path and size); ``deep`` checks every mask."""
    try:
        ms = MaskSet.open(out)
        if ms.extra.get("source_sig", {}) != _image_sig(image):
            return False
        if deep:
            ms.verify()
        return len(ms) > 0
    except MaskSetError:
        return False


class _WarningCatcher(logging.Handler):
    """Collects the messages of WARNING-or-worse records while one volume is processed."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


class MaskGenWorkflow(Workflow):
    """Generate mask sets for ``data`` (a datalist).

    Args:
        device: torch device (the mask source holds its own model on it).
        data: datalist entries ``{"image": path, "label"?: path, "modality"?: str}``.
        preprocessing: callable dict -> dict (load, check, RAS, intensity, slice plan).
        mask_source: callable adding ``masks`` / ``mask_provenance``.
        postprocessing: callable on the masks (``MaskPostprocessd``), or None.
        output_dir: where ``<case>.mset``, the summary and the failures file go.
        resume: skip volumes with complete, valid outputs.
        shard_name: suffix for summary/failure files when sharded (e.g. ``"_shard0of2"``).
        quality: compute mask quality against ``label`` when an entry has one (Dice >= ``quality_threshold``).
        overlay: write ``<output_dir>/overlays/<case>.png`` (matplotlib) for visual QA.
        handlers: MONAI/Ignite handlers (``MLFlowHandler`` is appended here by ``--tracking mlflow``).
        progress: show a tqdm progress bar over volumes.
    """

    def __init__(
        self,
        device: str | torch.device,
        data: Sequence[dict],
        preprocessing: Callable,
        mask_source: Callable,
        postprocessing: Callable | None,
        output_dir: str | os.PathLike,
        resume: bool = True,
        shard_name: str = "",
        quality: bool = True,
        quality_threshold: float = 0.4,
        overlay: bool = False,
        handlers: Sequence | None = None,
        progress: bool = True,
        suffix: str = ".mset",
    ) -> None:
        self.items = list(data)
        self.preprocessing, self.mask_source, self.mask_postprocessing = preprocessing, mask_source, postprocessing
        self.output_dir = Path(output_dir)
        self.resume, self.shard_name, self.suffix = resume, shard_name, suffix
        self.quality, self.quality_threshold, self.overlay = quality, quality_threshold, overlay
        self.results: list[dict] = []
        self._t0 = time.time()
        super().__init__(
            device=device,
            max_epochs=1,
            data_loader=self.items,
            epoch_length=len(self.items),
            handlers=handlers,
            decollate=False,
        )
        if progress and self.items:
            from tqdm.auto import tqdm

            bar: dict[str, Any] = {}

            def _start(engine: Any) -> None:
                bar["b"] = tqdm(total=len(self.items), desc="mask generation", unit="vol", file=sys.stderr)

            def _step(engine: Any) -> None:
                out = engine.state.output or {}
                bar["b"].set_postfix_str(f"{out.get('case', '')} {out.get('status', '')}")
                bar["b"].update(1)

            from ignite.engine import Events

            self.add_event_handler(Events.EPOCH_STARTED, _start)
            self.add_event_handler(Events.ITERATION_COMPLETED, _step)
            self.add_event_handler(Events.EPOCH_COMPLETED, lambda e: bar["b"].close())

    # ------------------------------------------------------------------ one volume
    def out_path(self, item: dict) -> Path:
        return self.output_dir / f"{volume_stem(item['image'])}{self.suffix}"

    def _iteration(self, engine: Any, item: Any) -> dict:
        if isinstance(item, list) and len(item) == 1:
            item = item[0]
        res = self.process(dict(item))
        self.results.append(res)
        self._update_metrics(res)
        return res

    def process(self, item: dict) -> dict:
        """Generate, post-process and write one volume; never raises for a bad volume.

        Warnings logged about the volume (``mass.*`` loggers, e.g. an implausible spacing) are kept
        in ``res["warnings"]`` and written to ``warnings<shard>.json`` by :meth:`finish`.
        """
        catcher = _WarningCatcher()
        mass_logger = logging.getLogger("mass")
        mass_logger.addHandler(catcher)
        try:
            res = self._process(item)
        finally:
            mass_logger.removeHandler(catcher)
        if catcher.lines:
            res["warnings"] = catcher.lines
        return res

    def _process(self, item: dict) -> dict:
        image = str(item["image"])
        case, out = volume_stem(image), self.out_path(item)
        res: dict[str, Any] = {"case": case, "image": image, "output": str(out)}
        for stale in self.output_dir.glob(f".{out.name}.*.tmp"):  # partial write of a crashed run
            stale.unlink(missing_ok=True)
        if self.resume and out.exists() and output_is_complete(out, image):
            res.update(status="skipped", **MaskSet.open(out).stats())
            return res
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                tp = time.perf_counter()
                d = self.preprocessing(item)
                timings = {"preprocess_s": time.perf_counter() - tp}
                d["timings"] = dict(d.get("timings") or {}, **timings)
                tm = time.perf_counter()
                d = self.mask_source(d)
                n_raw = len(d["masks"])
                d["timings"].setdefault("mask_source_s", time.perf_counter() - tm)
                if n_raw == 0:
                    raise ValueError("the mask source produced no masks")
                if self.mask_postprocessing is not None:
                    tq = time.perf_counter()
                    d = self.mask_postprocessing(d)
                    d["timings"]["postprocess_s"] = time.perf_counter() - tq
                if not d["masks"]:
                    raise ValueError(f"no masks survived post-processing ({n_raw} before)")
                img = d["image"]
                extra = {
                    "source_sig": _image_sig(image),
                    "timings": d["timings"],
                    "n_raw_masks": n_raw,
                    "n_masks_2d": d.get("n_masks_2d"),
                    "postprocess": d.get("postprocess_stats"),
                    "slice_plan": d.get("slice_plan"),
                }
                tw = time.perf_counter()
                write_maskset(
                    out,
                    d["masks"],
                    np.asarray(img.affine),
                    d["mask_provenance"],
                    image_path=image,
                    shape=tuple(img.shape[1:]),
                    extra=extra,
                )
                d["timings"]["write_s"] = time.perf_counter() - tw
            ms = MaskSet.open(out)
            res.update(
                status="done", seconds=time.perf_counter() - t0, n_raw_masks=n_raw, timings=d["timings"], **ms.stats()
            )
            if self.quality and item.get("label"):
                from components.maskgen.quality import evaluate_maskset

                q = evaluate_maskset(out, item["label"], self.quality_threshold)
                res["quality"] = {k: v for k, v in q.items() if k != "per_label"}
            if self.overlay:
                from components.maskgen.overlay import save_overlay

                save_overlay(d["image"], ms, self.output_dir / "overlays" / f"{case}.png")
        except Exception as err:  # one bad volume never stops the others
            e = root_cause(err)  # MONAI's apply_transform wraps errors in RuntimeError
            msg = str(e).splitlines()[0] if str(e) else ""
            reason = f"{type(e).__name__}: {msg}" if image in msg else f"{type(e).__name__}: {image}: {msg}"
            logger.debug("volume %s failed:\n%s", image, traceback.format_exc())
            res.update(status="failed", reason=reason, seconds=time.perf_counter() - t0)
        return res

    # ------------------------------------------------------------------ bookkeeping
    def _update_metrics(self, res: dict) -> None:
        m = self.state.metrics
        safe = re.sub(r"[^A-Za-z0-9_.\- /]", "_", res["case"])
        if res["status"] in ("done", "skipped"):
            m[f"{safe}/n_masks"] = float(res["n_masks"])
            m[f"{safe}/file_mb"] = float(res["file_mb"])
            m[f"{safe}/bits_per_mask_voxel"] = float(res["bits_per_mask_voxel"])
            if "seconds" in res:
                m[f"{safe}/seconds"] = float(res["seconds"])
            if "quality" in res:
                m[f"{safe}/mean_best_dice"] = float(res["quality"]["mean_best_dice"])
        m.update({f"summary/{k}": float(v) for k, v in self.summary().items() if isinstance(v, (int, float))})

    def summary(self) -> dict:
        """Counts, totals and means over the volumes processed so far."""
        st = [r["status"] for r in self.results]
        ok = [r for r in self.results if r["status"] in ("done", "skipped")]
        n = [r["n_masks"] for r in ok]
        return {
            "n_volumes": len(self.items),
            "n_done": st.count("done"),
            "n_skipped": st.count("skipped"),
            "n_failed": st.count("failed"),
            "masks_total": int(sum(n)),
            "masks_mean": float(np.mean(n)) if n else 0.0,
            "mb_mean": float(np.mean([r["file_mb"] for r in ok])) if ok else 0.0,
            "seconds": time.time() - self._t0,
        }

    def warnings_file(self) -> Path:
        return self.output_dir / f"warnings{self.shard_name}.json"

    def failures_file(self) -> Path:
        return self.output_dir / f"failures{self.shard_name}.json"

    def finish(self, exit_on_failure: bool = True) -> dict:
        """Write ``summary<shard>.json`` and ``failures<shard>.json``, print the summary, exit 1 if any failed."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        summ = self.summary()
        fails = [{"image": r["image"], "reason": r["reason"]} for r in self.results if r["status"] == "failed"]
        atomic_json(self.output_dir / f"summary{self.shard_name}.json", {"summary": summ, "volumes": self.results})
        atomic_json(self.failures_file(), fails)
        warned = [{"image": r["image"], "warning": w} for r in self.results for w in r.get("warnings", ())]
        atomic_json(self.warnings_file(), warned)
        print(
            f"mask generation: {summ['n_done']} done, {summ['n_skipped']} skipped (complete), "
            f"{summ['n_failed']} failed of {summ['n_volumes']}; {summ['masks_total']} masks "
            f"(mean {summ['masks_mean']:.0f}/volume, {summ['mb_mean']:.2f} MB/volume) in {summ['seconds']:.1f} s "
            f"-> {self.output_dir}",
            file=sys.stderr,
        )
        for f in fails:
            print(f"  FAILED {f['reason']}", file=sys.stderr)
        if warned:
            print(f"  {len(warned)} warning(s), listed in {self.warnings_file()}", file=sys.stderr)
        if fails and exit_on_failure:
            raise SystemExit(f"{len(fails)} volume(s) failed; reasons in {self.failures_file()}")
        return summ
