"""The MONAI Deploy App SDK 4.0.0 application (apps/deploy, .venv-deploy) on a demo volume.

From a DICOM series (the demo MNI152 written as MR slices) and from the NIfTI file, the app's label map must
equal, voxel for voxel and in patient space, what ``monai.bundle run`` of the same bundle writes from the
same input; the DICOM SEG must hold one segment per class with exactly the label map's voxels.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.serve._live import DEMO, REPO, bundle_run, run_deploy_app

pytestmark = pytest.mark.timeout(900)

SEG_SUMMARY = """
import json, sys
import numpy as np, pydicom
ds = pydicom.dcmread(sys.argv[1])
frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
counts = {}
for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence):
    seg = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    counts[seg] = counts.get(seg, 0) + int(np.count_nonzero(frame))
print(json.dumps({"modality": ds.Modality, "labels": [s.SegmentLabel for s in ds.SegmentSequence],
                  "codes": [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in ds.SegmentSequence],
                  "series": ds.ReferencedSeriesSequence[0].SeriesInstanceUID, "counts": counts}))
"""


def _canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.as_closest_canonical(nib.load(path))
    return np.asarray(img.dataobj), img.affine


def test_deploy_app_from_dicom_series_equals_bundle_run(
    deploy_python: Path, fewshot_export: Path, class_names: list[str], tmp_path: Path
) -> None:
    series = tmp_path / "input" / "mni152_dicom"
    subprocess.run(
        [str(deploy_python), str(REPO / "apps/deploy/nifti_to_dicom.py"), str(DEMO / "mni152_t1.nii.gz"), str(series)],
        check=True,
        capture_output=True,
    )
    run_deploy_app(deploy_python, fewshot_export, series, tmp_path / "out")
    deployed = tmp_path / "out" / "mni152_dicom_seg.nii.gz"
    expected = bundle_run(fewshot_export, "inference.json", series, tmp_path / "run")
    (a, a_aff), (b, b_aff) = _canonical(deployed), _canonical(expected)
    assert a.shape == b.shape and sorted(a.shape) == sorted(nib.load(DEMO / "mni152_t1.nii.gz").shape)
    np.testing.assert_allclose(a_aff, b_aff, atol=1e-3)
    assert len(np.unique(a)) > 2 and int((a != b).sum()) == 0
    segs = sorted((tmp_path / "out").glob("*.dcm"))
    assert len(segs) == 1
    res = subprocess.run(
        [str(deploy_python), "-c", SEG_SUMMARY, str(segs[0])], capture_output=True, text=True, check=True
    )
    seg = json.loads(res.stdout)
    assert seg["modality"] == "SEG" and seg["labels"] == class_names
    assert "91723000" not in seg["codes"], seg["codes"]  # each class its SNOMED CT concept, none left generic
    assert deployed.stat().st_mode & 0o777 == expected.stat().st_mode & 0o777  # same file mode as bundle run
    counts = {int(k): v for k, v in seg["counts"].items()}
    present = {v: int((a == v).sum()) for v in range(1, len(class_names) + 1) if (a == v).any()}
    assert {k: v for k, v in counts.items() if v} == present


def test_deploy_app_from_nifti_equals_bundle_run(deploy_python: Path, fewshot_export: Path, tmp_path: Path) -> None:
    run_deploy_app(deploy_python, fewshot_export, DEMO / "itk_t1.nii.gz", tmp_path / "out")
    deployed = nib.load(tmp_path / "out" / "itk_t1_seg.nii.gz")
    expected = nib.load(bundle_run(fewshot_export, "inference.json", DEMO / "itk_t1.nii.gz", tmp_path / "run"))
    assert deployed.shape == expected.shape == nib.load(DEMO / "itk_t1.nii.gz").shape
    np.testing.assert_allclose(deployed.affine, expected.affine, atol=1e-4)
    assert int((np.asarray(deployed.dataobj) != np.asarray(expected.dataobj)).sum()) == 0
