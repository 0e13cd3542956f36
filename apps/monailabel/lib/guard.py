"""Keep the MONAI Label app inside its datastore, and answer bad requests with a 4xx and the reason.

MONAI Label 0.8.5 joins image ids and label tags from the request into file paths
(``PUT /datastore/image?image=../x`` writes ``x.nii.gz`` next to the studies folder,
``PUT /datastore/label?tag=../../x`` next to it too) and ``app.infer`` segments any existing server path given
as ``image``. Unreadable uploads are stored as they come, and fail later with a bare 500.

* :func:`check_name` — ids and tags are plain names: letters, digits, ``.``, ``_``, ``-``; no path separator,
  no ``..``, not starting with ``.`` or ``-``, at most 128 characters.
* :class:`CheckedDatastore` — a ``LocalDatastore`` that refuses such names, uploads it would not list (another
  extension), uploads that are not one 3D volume, and labels that are not on their image's grid or hold
  non-integer or negative values; nothing is written before the checks pass. The routes that name an
  existing image or label (``PUT /datastore/image/info``, ``PUT /datastore/label/info``, ``DELETE
  /datastore/image``, ``DELETE /datastore/label``) answer 400 for a name that is not plain and 404 for an
  image or label the datastore does not hold (MONAI Label answers 500, or deletes by a joined path).
* :func:`infer_error` — a ``VolumeError`` met during inference as a 400 naming the file.
* :func:`private_upload_dir` — the server's temporary folder, where MONAI Label puts uploads.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import tempfile
from typing import Any

import numpy as np
import torch
from fastapi import HTTPException
from monai.data import MetaTensor
from monailabel.datastore.local import LocalDatastore

from components.checks.errors import VolumeError, volume_error_of
from components.data.loading import CheckVolumed, LoadVolumed

logger = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
NAME_RULE = (
    "letters, digits, '.', '_' and '-' only (no path separator, no '..', "
    "not starting with '.' or '-'), at most 128 characters"
)


UPLOADS = "mass-monailabel-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def private_upload_dir() -> str:
    """A new folder (mode 0700) ``mass-monailabel-<pid>-*`` in the system's temporary folder, made the
    process's temporary folder; those of servers no longer running are removed first (uvicorn ends on
    SIGTERM by the signal itself, so no exit hook of ours runs)."""
    base = tempfile.gettempdir()
    for old in glob.glob(os.path.join(base, UPLOADS + "*-*")):
        pid = os.path.basename(old)[len(UPLOADS) :].split("-")[0]
        if pid.isdigit() and os.stat(old).st_uid == os.getuid() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    folder = os.path.realpath(tempfile.mkdtemp(prefix=f"{UPLOADS}{os.getpid()}-", dir=base))
    tempfile.tempdir = folder
    return folder


def http_error(status: int, message: str) -> HTTPException:
    """A ``status`` reply whose ``detail`` is ``message`` (also logged)."""
    logger.error("%d: %s", status, message)
    return HTTPException(status_code=status, detail=message)


def check_name(what: str, value: str) -> str:
    """``value`` if it is a plain file name stem (:data:`NAME_RULE`), else a 400 naming ``what``."""
    if not NAME.fullmatch(value) or ".." in value:
        raise http_error(400, f"{what} {value!r} is refused: {what}s may hold {NAME_RULE}")
    return value


def load_upload(path: str, what: str) -> MetaTensor:
    """The uploaded file at ``path`` as one checked 3D volume ``[1, X, Y, Z]``, else a 400 saying why."""
    try:
        data = LoadVolumed("v")({"v": path})
        return CheckVolumed("v", image_key="v")(data)["v"]
    except VolumeError as e:  # the problem may quote the temporary name the upload was given
        raise http_error(400, f"{what}: {e.problem.replace(path, 'the uploaded file')}") from e


def _is_label_map(x: torch.Tensor) -> bool:
    t = torch.as_tensor(x)
    return bool(torch.equal(t, torch.round(t))) and float(t.min()) >= 0


def infer_error(exc: BaseException, upload_dir: str) -> HTTPException | None:
    """A 400 for an inference that failed on an unusable volume (its ``VolumeError``), else ``None``.

    Temporary names of uploaded files (under ``upload_dir``) read as "the uploaded file".
    """
    err = volume_error_of(exc)
    if err is None:
        return None
    message = re.sub(re.escape(upload_dir + os.sep) + r"[^\s:]+", "the uploaded file", str(err))
    return http_error(400, f"cannot segment: {message}")


class CheckedDatastore(LocalDatastore):
    """``LocalDatastore`` that checks ids, tags and uploaded volumes before anything is written."""

    def _check_extension(self, filename: str, what: str) -> None:
        exts = [e.lstrip("*") for e in self._extensions]
        found = next((e for e in exts if os.path.basename(filename).endswith(e)), None)
        if found is None:
            _, got = self._to_id(os.path.basename(filename))
            raise http_error(400, f"{what}: file type {got or '(none)'!r} is not one of {', '.join(exts)}")

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        if not image_id:
            image_id, _ = self._to_id(os.path.basename(image_filename))
        check_name("image id", image_id)
        what = f"uploaded image {image_id!r}"
        self._check_extension(image_filename, what)
        load_upload(image_filename, what)
        return super().add_image(image_id, image_filename, image_info)

    def _known_image(self, image_id: str) -> None:
        check_name("image id", image_id)
        if image_id not in self._datastore.objects:
            raise http_error(404, f"no image {image_id!r} in the datastore")

    def _known_label(self, image_id: str, label_tag: str) -> None:
        check_name("tag", label_tag)
        self._known_image(image_id)
        if label_tag not in self._datastore.objects[image_id].labels:
            raise http_error(404, f"image {image_id!r} has no label with tag {label_tag!r}")

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        self._known_image(image_id)
        return super().update_image_info(image_id, info)

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        self._known_label(label_id, label_tag)
        return super().update_label_info(label_id, label_tag, info)

    def remove_image(self, image_id: str) -> None:
        self._known_image(image_id)
        return super().remove_image(image_id)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        self._known_label(label_id, label_tag)
        return super().remove_label(label_id, label_tag)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        check_name("tag", label_tag)
        image = self.get_image_uri(image_id)
        if not image:
            raise http_error(404, f"no image {image_id!r} in the datastore to label")
        what = f"uploaded label of {image_id!r} (tag {label_tag!r})"
        self._check_extension(label_filename, what)
        label = load_upload(label_filename, what)
        if not _is_label_map(label):
            raise http_error(400, f"{what}: label values must be whole numbers >= 0")
        ref = load_upload(image, f"image {image_id!r} of the datastore")
        shape, ref_shape = tuple(label.shape[1:]), tuple(ref.shape[1:])
        if shape != ref_shape:
            raise http_error(400, f"{what}: grid {shape} does not match the image's grid {ref_shape}")
        if not np.allclose(np.asarray(label.affine), np.asarray(ref.affine), atol=1e-3):
            raise http_error(400, f"{what}: affine (position, spacing, orientation) does not match the image's")
        return super().save_label(image_id, label_filename, label_tag, label_info)
