"""MONAI Label app for the MASS bundles.

    .venv-serve/bin/monailabel start_server --app apps/monailabel --studies STUDIES \\
        --conf bundle bundles/mass_fewshot --conf incontext_checkpoint PATH/model.pt

Models (``/info``):

* ``mass_fewshot`` — the finetuned fixed-class segmenter of ``bundles/mass_fewshot`` (``configs/inference.json``,
  ``models/model.pt`` or ``model.ts``); label values 1..N as the bundle's ``channel_def``. ``/train/mass_fewshot``
  finetunes it on the datastore's labelled volumes (``configs/train.json``) and writes ``models/model.pt``.
* ``mass_incontext`` — "label one, segment all": segments an image in context from the labelled volumes of the
  datastore (``configs/incontext.json``), no training. Needs ``--conf incontext_checkpoint`` (our ``mass_pretrain``
  ``model.pt``, or the authors' ``mass_base.pth`` with ``--conf incontext_init release``).

Conf keys: ``bundle`` (default ``bundles/mass_fewshot`` of this repository), ``incontext_checkpoint``
(default ``<bundle>/models/pretrained.pt``), ``incontext_init`` (``pretrained`` | ``release``),
``skip_trainers`` (``true`` to serve only). Nothing is downloaded: the app works offline.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lib.fewshot import FewShotTrainTask, fewshot_infer_task
from lib.incontext import InContextInferTask
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


class MyApp(MONAILabelApp):
    """MASS few-shot (fixed-class and in-context) segmentation served by MONAI Label."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundle = str(Path(conf.get("bundle") or REPO / "bundles" / "mass_fewshot").resolve())
        if not os.path.isfile(os.path.join(self.bundle, "configs", "inference.json")):
            raise FileNotFoundError(f"{self.bundle}: not a mass_fewshot bundle (no configs/inference.json)")
        self.incontext_checkpoint = conf.get("incontext_checkpoint") or os.path.join(
            self.bundle, "models", "pretrained.pt"
        )
        self.incontext_init = conf.get("incontext_init", "pretrained")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MASS few-shot segmentation",
            description="MASS bundles: fixed-class few-shot model and in-context 'label one, segment all'",
            version="0.3.0",
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        fewshot = fewshot_infer_task(self.bundle, self.conf)
        if fewshot.is_valid():
            infers["mass_fewshot"] = fewshot
        else:
            logger.warning("mass_fewshot not served: %s/models has no model.pt or model.ts", self.bundle)
        if os.path.isfile(self.incontext_checkpoint):
            infers["mass_incontext"] = InContextInferTask(
                self.bundle, self.incontext_checkpoint, self.datastore, init=self.incontext_init
            )
        else:
            logger.warning("mass_incontext not served: no checkpoint at %s", self.incontext_checkpoint)
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        return {"mass_fewshot": FewShotTrainTask(self.bundle, self.conf)}

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First()}
