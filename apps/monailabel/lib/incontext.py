""" "Label one, segment all": in-context segmentation in MONAI Label, with no training.

:class:`InContextInferTask` segments an image from the labelled volumes of the datastore (or from the
datastore images named in the request's ``references``), using ``bundles/mass_fewshot/configs/incontext.json``
for preprocessing, inferer and postprocessing, so the server gives what ``monai.bundle run`` gives.

* Network: our ``mass_pretrain`` ``model.pt`` or the authors' release checkpoint (``mass_base.pth``); the
  EMA weights when the file has them, the preset read from the weights.
* Task embedding: encoded from the references once per label set (image, label file and its modification
  time, classes) and kept in memory; a label saved again is a new label set.
* Classes: the bundle's (label values 1..N of ``/info``); only the classes present in every reference are
  segmented, with their own label values.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from fastapi import HTTPException
from monai.bundle import ConfigParser
from monai.transforms import Compose, SaveImaged
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.transform.post import Restored

from components.data.classes import FewShotClass
from components.data.loading import LoadVolumed
from components.inference.support import encode_support
from components.network.release_checkpoint import preset_of_checkpoint
from lib.output import LabelMapWriter

logger = logging.getLogger(__name__)


def bad_request(message: str) -> HTTPException:
    """A 400 reply whose ``detail`` tells the client what is wrong with its request or datastore."""
    logger.error(message)
    return HTTPException(status_code=400, detail=message)


class InContextInferTask(LabelMapWriter, BasicInferTask):
    """MONAI Label infer task: segment ``image`` in context from labelled reference volumes.

    Args:
        bundle: the ``mass_fewshot`` bundle folder (its ``configs/incontext.json`` is used).
        checkpoint: in-context weights (``mass_pretrain`` ``model.pt`` or the release ``mass_base.pth``).
        datastore: returns the app's datastore (labelled volumes, ``final`` tag).
        init: ``"pretrained"`` (our weights) or ``"release"`` (the authors').
    Request params: ``references`` — datastore image ids (list or comma-separated); default: every image
    with a final label except the one segmented.
    """

    def __init__(
        self, bundle: str, checkpoint: str, datastore: Callable[[], Datastore], init: str = "pretrained"
    ) -> None:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"{checkpoint}: in-context checkpoint does not exist")
        parser = ConfigParser()
        parser.read_config(os.path.join(bundle, "configs", "incontext.json"))
        parser.read_meta(os.path.join(bundle, "configs", "metadata.json"))
        parser.update(
            {
                "bundle_root": bundle,
                "init": init,
                "init_checkpoint": checkpoint,
                "preset": preset_of_checkpoint(checkpoint),
                "task": None,  # set per request from the reference label set
            }
        )
        names = list(parser.get_parsed_content("class_names"))
        classes = parser.get_parsed_content("classes")
        self.classes = [FewShotClass(n, tuple(int(i) for i in classes[n])) for n in names]
        super().__init__(
            path=None,
            network=None,
            type=InferType.SEGMENTATION,
            labels={c.name: c.label_ids[0] for c in self.classes},
            dimension=3,
            description=f"In-context MASS segmentation from labelled volumes of the datastore ({Path(checkpoint).name})",
            config={"references": ""},
        )
        self.parser = parser
        self.datastore = datastore
        self.checkpoint = checkpoint
        self._tasks: dict[tuple, Any] = {}
        self._lock = threading.Lock()

    def is_valid(self) -> bool:
        return True

    # -- network and label set ---------------------------------------------------------------

    def _get_network(self, device: str, data: Any) -> torch.nn.Module:
        with self._lock:
            cached = self._networks.get(device)
            if cached is None:
                cached = copy.deepcopy(self.parser.get_parsed_content("network_def")).to(torch.device(device)).eval()
                self._networks[device] = cached
            return cached

    def references(self, data: dict[str, Any]) -> list[dict[str, str]]:
        """Image/label pairs of the reference volumes for this request."""
        store = self.datastore()
        asked = data.get("references") or []
        ids = [s.strip() for s in asked.split(",")] if isinstance(asked, str) else [str(s) for s in asked]
        ids = [i for i in ids if i]
        query = os.path.realpath(str(data.get("image_path") or data.get("image")))
        if not ids:
            ids = [
                i
                for i in store.get_labeled_images(DefaultLabelTag.FINAL)
                if os.path.realpath(store.get_image_uri(i)) != query
            ]
        if not ids:
            raise bad_request("no labelled reference volume: save a label for one volume of the datastore first")
        refs = []
        for image_id in ids:
            label = store.get_label_uri(image_id, DefaultLabelTag.FINAL)
            if not label or not os.path.exists(label):
                raise bad_request(f"reference {image_id!r} has no final label in the datastore")
            refs.append({"image": store.get_image_uri(image_id), "label": label})
        return refs

    def _present_classes(self, refs: Sequence[dict[str, str]]) -> list[FewShotClass]:
        present = None
        load = LoadVolumed("label", dtype=None)
        for ref in refs:
            values = set(torch.unique(load({"label": ref["label"]})["label"]).tolist())
            found = {c.name for c in self.classes if values.intersection(c.label_ids)}
            present = found if present is None else present & found
        chosen = [c for c in self.classes if c.name in (present or set())]
        if not chosen:
            ids = {c.name: list(c.label_ids) for c in self.classes}
            raise bad_request(
                f"references {[r['label'] for r in refs]} hold none of the classes {ids} in every label map"
            )
        return chosen

    def task_for(self, refs: Sequence[dict[str, str]], device: str) -> tuple[Any, list[FewShotClass], bool]:
        """(task embedding, classes, whether it was encoded now) of the label set ``refs``."""
        key = (tuple((r["image"], r["label"], os.stat(r["label"]).st_mtime_ns) for r in refs), device)
        with self._lock:
            if key in self._tasks:
                task, classes = self._tasks[key]
                return task, classes, False
        classes = self._present_classes(refs)
        net = self._get_network(device, None)
        task = encode_support(
            net,
            refs,
            classes,
            spacing=self.parser.get_parsed_content("spacing"),
            roi_size=self.parser.get_parsed_content("roi_size"),
            modality=self.parser.get_parsed_content("modality"),
            device=device,
        )
        with self._lock:
            self._tasks[key] = (task, classes)
        logger.info("encoded task embedding of %s from %d reference(s)", [c.name for c in classes], len(refs))
        return task, classes, True

    # -- MONAI Label hooks -------------------------------------------------------------------

    def pre_transforms(self, data: Any = None) -> Sequence[Callable]:
        pre = self.parser.get_parsed_content("preprocessing")
        return list(pre.transforms) if isinstance(pre, Compose) else list(pre)

    def inferer(self, data: Any = None) -> Any:
        device = str(data.get("device", "cpu")) if data else "cpu"
        refs = self.references(data)
        task, classes, encoded = self.task_for(refs, device)
        data["label_ids"] = [c.label_ids[0] for c in classes]
        data["result"] = {
            "references": [r["image"] for r in refs],
            "classes": {c.name: c.label_ids[0] for c in classes},
            "task_encoded": encoded,
        }
        inferer = copy.copy(self.parser.get_parsed_content("inferer"))
        inferer.task = task
        return inferer

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        post = self.parser.get_parsed_content("postprocessing")
        kept = [t for t in (post.transforms if isinstance(post, Compose) else post) if not isinstance(t, SaveImaged)]
        return [*kept, Restored(keys=self.output_label_key, ref_image=self.input_key)]
