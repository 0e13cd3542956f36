"""Write a NIfTI volume as a DICOM series (MR Image Storage, one file per slice), to try the Deploy app.

    .venv-deploy/bin/python apps/deploy/nifti_to_dicom.py data/demo/mni152_t1.nii.gz /tmp/mni152_dicom

Voxel ``[i, j, k]`` becomes pixel (row ``j``, column ``i``) of slice ``k``; positions and orientation come
from the NIfTI affine (RAS) turned into DICOM's LPS, so a reader that honours ImagePositionPatient and
ImageOrientationPatient puts every voxel where the NIfTI has it. Integer volumes are stored as they are
(int16); others are scaled to int16 with RescaleSlope/RescaleIntercept. Every file is written to a
temporary name and renamed.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

LPS = np.diag([-1.0, -1.0, 1.0])  # RAS -> LPS


def _int16(volume: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(stored int16 voxels, slope, intercept) with stored * slope + intercept == volume (exact for integers)."""
    if np.issubdtype(volume.dtype, np.integer) and volume.min() >= -32768 and volume.max() <= 32767:
        return volume.astype(np.int16), 1.0, 0.0
    lo, hi = float(volume.min()), float(volume.max())
    slope = (hi - lo) / 65000.0 or 1.0
    return np.round((volume - lo) / slope - 32500).astype(np.int16), slope, lo + 32500 * slope


def nifti_to_dicom(nifti: str | os.PathLike, out_dir: str | os.PathLike, modality: str = "MR") -> list[Path]:
    """Write ``nifti`` as a series in ``out_dir``; returns the slice files."""
    img = nib.load(str(nifti))
    volume = np.asarray(img.dataobj)
    if volume.ndim != 3:
        raise ValueError(f"{nifti}: a 3D volume is required, got shape {volume.shape}")
    affine = LPS @ np.asarray(img.affine, dtype=np.float64)[:3]
    steps = np.sqrt((affine[:, :3] ** 2).sum(0))
    row_dir, col_dir = affine[:, 0] / steps[0], affine[:, 1] / steps[1]
    stored, slope, intercept = _int16(volume)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    files = []
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate = "MASS^Demo", "MASS-DEMO", "O", ""
        ds.StudyDate = ds.SeriesDate = "20260101"
        ds.StudyTime = ds.SeriesTime = "000000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.Modality, ds.Manufacturer = modality, "MASS bundles"
        ds.StudyDescription, ds.SeriesDescription = "MASS demo", f"{Path(nifti).name} as DICOM"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImagePositionPatient = [float(v) for v in affine[:, 3] + k * affine[:, 2]]
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [float(steps[1]), float(steps[0])]  # between rows, between columns
        ds.SliceThickness = float(steps[2])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        target = out / f"slice{k:04d}.dcm"
        tmp = out / f".slice{k:04d}.dcm.partial"
        ds.save_as(str(tmp), enforce_file_format=True)
        os.replace(tmp, target)
        files.append(target)
    return files


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("nifti")
    parser.add_argument("out_dir")
    parser.add_argument("--modality", default="MR")
    args = parser.parse_args()
    print(f"{len(nifti_to_dicom(args.nifti, args.out_dir, args.modality))} slices written to {args.out_dir}")
