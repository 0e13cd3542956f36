"""MONAI Label app for the MASS bundles.

    PATH=$PWD/.venv-serve/bin:$PATH monailabel start_server --app apps/monailabel --studies STUDIES \\
        --conf bundle bundles/mass_fewshot --conf incontext_checkpoint PATH/model.pt

(from the repository root; ``monailabel`` starts the app with the ``python`` first on ``PATH``, so the serving
environment must come first there: calling ``.venv-serve/bin/monailabel`` alone runs the system python).

Models (``/info``):

* ``mass_fewshot`` — the finetuned fixed-class segmenter of ``bundles/mass_fewshot`` (``configs/inference.json``,
  ``models/model.pt`` or ``model.ts``); label values 1..N as the bundle's ``post_processed_outputs`` ``channel_def``. ``/train/mass_fewshot``
  finetunes it on the datastore's labelled volumes (``configs/train.json``) and writes ``models/model.pt``.
* ``mass_incontext`` — "label one, segment all": segments an image in context from the labelled volumes of the
  datastore (``configs/incontext.json``), no training. Needs ``--conf incontext_checkpoint`` (our ``mass_pretrain``
  ``model.pt``, or the authors' ``mass_base.pth`` with ``--conf incontext_init release``).

Conf keys: ``bundle`` (default ``bundles/mass_fewshot`` of this repository), ``incontext_checkpoint``
(default ``<bundle>/models/pretrained.pt``), ``incontext_init`` (``pretrained`` | ``release``),
``skip_trainers`` (``true`` to serve only), ``allow_server_paths`` (``true``: ``/infer`` also takes a path on
the server as ``image``; default ``false``: only image ids of the datastore and uploaded files).
Nothing is downloaded: the app works offline.

The app stays inside its datastore (``lib/guard.py``): image ids and label tags are plain names, uploads must be
one 3D volume (a label on its image's grid, whole values >= 0), and refusals are 4xx replies whose ``detail``
says why. Uploads go to a private temporary folder of the server process, the only place besides the
datastore and MONAI Label's sessions from which ``/infer`` reads a file that is not a datastore id.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from lib.fewshot import FewShotTrainTask, fewshot_infer_task
from lib.guard import CheckedDatastore, http_error, infer_error, private_upload_dir
from lib.incontext import InContextInferTask
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import strtobool

logger = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


def _inside(path: str, folder: str) -> bool:
    """``path`` lies in ``folder`` (both real paths), and is not ``folder`` itself."""
    return path != folder and os.path.commonpath([path, folder]) == folder


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
        self.allow_server_paths = strtobool(conf.get("allow_server_paths", "false"))
        # MONAI Label writes uploads to tempfile names: keep them in a folder of ours (mode 0700), so that
        # "a file uploaded with this request" is "a file in this folder", never a path a client names
        self.upload_dir = private_upload_dir()
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MASS few-shot segmentation",
            description="MASS bundles: fixed-class few-shot model and in-context 'label one, segment all'",
            version="0.3.0",
        )

    def init_datastore(self) -> Datastore:
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return CheckedDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _readable_folders(self) -> list[str]:
        """Folders whose files ``/infer`` reads by path: uploads of this process and MONAI Label sessions."""
        sessions = self.sessions()
        return [self.upload_dir] + ([os.path.realpath(sessions.store_path)] if sessions else [])

    def checked_image(self, image: str, datastore: Datastore) -> None:
        """Refuse an ``image`` that is neither a datastore id nor a file this server received (4xx with the reason)."""
        if image in datastore.list_images():
            return
        real = os.path.realpath(image)
        if os.path.exists(real) and any(_inside(real, d) for d in self._readable_folders()):
            return  # a file uploaded with the request (or a session's image)
        if self.allow_server_paths:
            if not os.path.exists(image):
                raise http_error(
                    404, f"image {image!r} is neither an image id of the datastore nor a file on the server"
                )
            return
        if os.sep in image or os.path.isabs(image) or os.path.exists(image):
            raise http_error(
                403,
                f"image {image!r} is a server path: only image ids of the datastore (or an uploaded file) are "
                "accepted; start the app with --conf allow_server_paths true to segment files on the server",
            )
        raise http_error(404, f"no image {image!r} in the datastore")

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        image = request.get("image")
        if isinstance(image, str):
            self.checked_image(image, datastore or self.datastore())
        try:
            return super().infer(request, datastore)
        except HTTPException:
            raise
        except Exception as e:
            reply = infer_error(e, self.upload_dir)
            if reply is None:
                raise
            raise reply from e

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
