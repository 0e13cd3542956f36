"""The fixed-class few-shot model of ``bundles/mass_fewshot`` as a MONAI Label infer and train task.

* :func:`fewshot_infer_task` — MONAI Label's ``BundleInferTask`` on ``configs/inference.json``, with strict
  weight loading (a checkpoint that does not fit the network is an error, never a half-random model).
  Labels come from ``metadata.json``'s ``channel_def``: 1..N, the values the bundle writes.
* :class:`FewShotTrainTask` — MONAI Label's ``BundleTrainTask`` on ``configs/train.json``, fed from the
  datastore: the class embeddings start from the labelled volumes of the datastore (not from a split
  file of the repository), label values are the bundle's 1..N, and with too few labelled volumes for a
  validation part the training volumes validate (so a model is always saved). When the bundle ships
  ``models/model.ts`` (for MONAI Deploy), it is scripted again from the new weights (temporary name, then
  rename), so the bundle never holds a TorchScript model older than its ``model.pt``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from monai.bundle import ckpt_export
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask

from components.io.atomic import default_file_mode
from components.tracking.identity import file_sha256
from lib.output import LabelMapWriter

logger = logging.getLogger(__name__)


class FewShotInferTask(LabelMapWriter, BundleInferTask):
    """MONAI Label's ``BundleInferTask`` writing uint8 label maps."""


def fewshot_infer_task(bundle: str, conf: dict[str, str]) -> BundleInferTask:
    """Fixed-class segmentation with the bundle's ``models/model.pt`` (or ``model.ts``).

    Label names and values (1..N) come from ``outputs`` ``channel_def``, keyed by the label value of each channel.
    """
    return FewShotInferTask(bundle, conf, type="segmentation", load_strict=True)


class FewShotTrainTask(BundleTrainTask):
    """Finetune the fixed-class model on the datastore's labelled volumes (label values 1..N)."""

    def __init__(self, bundle: str, conf: dict[str, str]) -> None:
        super().__init__(bundle, conf, load_strict=True)

    def _partition_datalist(self, datalist: list[dict[str, Any]], request: dict[str, Any], shuffle: bool = False):
        train, val = super()._partition_datalist(datalist, request, shuffle)
        if val is not None and not val:
            logger.info(
                "fewer labelled volumes than a validation part needs: the %d training volumes validate", len(train)
            )
            val = list(train)
        return train, val

    def __call__(self, request: dict[str, Any], datastore: Any) -> dict[str, Any]:
        if not self._fetch_datalist(request, datastore):
            raise ValueError("no labelled volume in the datastore: save a label (values 1..N of /info) first")
        self._trained: dict[str, Any] = {}
        result = super().__call__(request, datastore)
        self.refresh_torchscript()
        files = refresh_large_files(self.bundle_path)
        return {**(result or {}), **self._trained, "output_dir": self.output_dir, "files": files}

    @property
    def output_dir(self) -> str:
        """Where training writes what is not a model (its initial task, logs): outside the bundle, in the
        MONAI Label app's ``model/`` folder, so the bundle holds only its configs and ``models/``."""
        from monailabel.config import settings

        base = settings.MONAI_LABEL_APP_DIR or tempfile.gettempdir()
        return os.path.join(base, "model", f"{os.path.basename(os.path.normpath(self.bundle_path))}_train")

    def run_single_gpu(self, request: dict[str, Any], overrides: dict[str, Any]) -> None:
        """The bundle's ``train.json`` run as ``monai.bundle run`` does, keeping what was trained for the reply."""
        from monai.bundle import ConfigWorkflow

        wf = ConfigWorkflow(
            config_file=self.bundle_config_path,
            meta_file=self.bundle_metadata_path,
            workflow_type="train",
            **overrides,
        )
        wf.initialize()
        wf.run()
        trainer = wf.parser.get_parsed_content("train#trainer")
        evaluator = wf.parser.get_parsed_content("validate#evaluator")
        best = getattr(evaluator.state, "best_metric", None)
        self._trained = {
            "epochs": int(trainer.state.epoch),
            "iterations": int(trainer.state.iteration),
            "best_val_mean_dice": None if best is None or best == -1 else float(best),
            "best_epoch": int(getattr(evaluator.state, "best_metric_epoch", -1)),
        }
        wf.finalize()

    def refresh_torchscript(self) -> None:
        """MONAI's ``ckpt_export`` of inference.json's ``network_def`` with the trained ``model.pt`` (if ``model.ts`` is shipped)."""
        models, configs = os.path.join(self.bundle_path, "models"), os.path.join(self.bundle_path, "configs")
        target, weights = os.path.join(models, "model.ts"), os.path.join(models, "model.pt")
        if not os.path.isfile(target) or os.path.getmtime(target) >= os.path.getmtime(weights):
            return
        fd, tmp = tempfile.mkstemp(dir=models, prefix=".model.", suffix=".partial.ts")
        os.close(fd)
        try:
            ckpt_export(
                net_id="network_def",
                filepath=tmp,
                ckpt_file=weights,
                key_in_ckpt="model",  # ignite's loader also takes a flat state dict under a single key
                meta_file=os.path.join(configs, "metadata.json"),
                config_file=os.path.join(configs, "inference.json"),
                bundle_root=self.bundle_path,
            )
            os.chmod(tmp, default_file_mode())  # as model.pt, not mkstemp's 0600
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        logger.info("models/model.ts exported again from the trained model.pt")

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        # train.json starts the class embeddings from train#dataset#data: the datastore's labelled volumes
        overrides["shots"] = len(overrides["train#dataset#data"])
        overrides["output_dir"] = self.output_dir  # nothing but models/ is written inside the bundle
        return overrides


def refresh_large_files(bundle: str) -> dict[str, str]:
    """``{models/<file>: sha256}`` of the bundle's model files, written into its ``large_files.yml`` (if it
    has one) so the hashes stay true after training replaced ``model.pt`` / ``model.ts``."""
    import re

    models = Path(bundle) / "models"
    files = sorted(p for p in models.glob("*") if p.is_file() and not p.name.startswith(".")) if models.is_dir() else []
    hashes = {f"models/{p.name}": file_sha256(p, digits=64) for p in files}
    listing = Path(bundle) / "large_files.yml"
    if listing.is_file():
        text = listing.read_text()
        for rel, digest in hashes.items():
            pattern = rf'(path: "{re.escape(rel)}"\n(?:\s+\w+: [^\n]*\n)*?\s+hash_val: ")[0-9a-f]*(")'
            text = re.sub(pattern, rf"\g<1>{digest}\g<2>", text)
        tmp = listing.with_name(".large_files.yml.partial")
        tmp.write_text(text)
        os.replace(tmp, listing)
    return hashes
