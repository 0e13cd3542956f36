"""NIfTI in and out for the MASS Deploy app (the SDK's DICOM operators cover DICOM).

* :class:`NiftiVolumeLoaderOperator` — a NIfTI file -> SDK ``Image`` holding the voxels in file order
  ``[X, Y, Z]`` and the file's affine, which the bundle operator hands to the bundle's preprocessing as a
  MONAI ``MetaTensor`` (the SDK's own ``NiftiDataLoader`` drops the affine).
* :class:`LabelMapNiftiWriterOperator` — the bundle operator's label ``Image`` (``[Z, Y, X]``, uint8, the
  input's metadata) -> ``<output>/<name>_seg.nii.gz`` with the input's affine, written to a temporary name
  and renamed.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.deploy.core import ConditionType, Fragment, Image, Operator, OperatorSpec

logger = logging.getLogger(__name__)


class NiftiVolumeLoaderOperator(Operator):
    """Reads one NIfTI volume; output ``image``: ``Image`` with ``affine``/``original_affine``/``spacing``."""

    def __init__(self, fragment: Fragment, *args, input_path: Path, **kwargs) -> None:
        self.input_path = Path(input_path)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("image")

    def compute(self, op_input, op_output, context) -> None:
        if not self.input_path.is_file():
            raise FileNotFoundError(f"{self.input_path}: NIfTI input does not exist")
        img = nib.load(str(self.input_path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        if data.ndim != 3:
            raise ValueError(f"{self.input_path}: a 3D volume is required, got shape {data.shape}")
        affine = np.asarray(img.affine, dtype=np.float64)
        meta = {
            "affine": affine.copy(),
            "original_affine": affine.copy(),
            "spacing": np.sqrt((affine[:3, :3] ** 2).sum(0)),
            "spatial_shape": np.asarray(data.shape),
            "original_channel_dim": "no_channel",
            "filename_or_obj": str(self.input_path),
            "space": "RAS",
        }
        op_output.emit(Image(data, metadata=meta), "image")


class LabelMapNiftiWriterOperator(Operator):
    """Writes the label map ``seg_image`` as ``<output_folder>/<stem>_seg.nii.gz`` on the input grid."""

    def __init__(self, fragment: Fragment, *args, output_folder: Path, stem: str, **kwargs) -> None:
        self.output_folder = Path(output_folder)
        self.stem = stem
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("seg_image")
        spec.output("nifti_path").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context) -> None:
        seg = op_input.receive("seg_image")
        meta = seg.metadata()
        affine = meta.get("original_affine")
        if affine is None:
            affine = meta.get("nifti_affine_transform")
        if affine is None:
            raise ValueError("label image carries no affine; cannot place it in patient space")
        labels = np.swapaxes(seg.asnumpy(), 0, 2).astype(np.uint8)  # the SDK's [Z, Y, X] back to [X, Y, Z]
        self.output_folder.mkdir(parents=True, exist_ok=True)
        target = self.output_folder / f"{self.stem}_seg.nii.gz"
        fd, tmp = tempfile.mkstemp(dir=self.output_folder, prefix=f".{self.stem}_", suffix=".partial.nii.gz")
        os.close(fd)
        try:
            out = nib.Nifti1Image(labels, np.asarray(affine, dtype=np.float64))
            out.set_qform(out.affine, code=1)
            out.set_sform(out.affine, code=1)
            nib.save(out, tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would create it, not mkstemp's 0600
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        logger.info("label map written to %s", target)
        op_output.emit(str(target), "nifti_path")
