"""mass_pretrain configs/inference.json: a reference image + label onto a query volume, on real demo brains."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from components.checks.errors import VolumeError
from components.network.nets import build_network
from tests._bundles import bundle_workflow
from tests.pretrain._util import DEMO

torch.set_num_threads(1)


def _run(tmp_path: Path, **overrides: object) -> Path:
    out = tmp_path / "out"
    settings: dict[str, object] = {
        "query_image": str(DEMO / "mni152_t1.nii.gz"),
        "ref_image": str(DEMO / "colin27_t1.nii.gz"),
        "ref_label": str(DEMO / "colin27_seg.nii.gz"),
        "labels": [4],
        "preset": "tiny",
        "spacing": [4.0, 4.0, 4.0],
        "roi_size": [32, 32, 32],
        "output_dir": str(out),
    }
    wf = bundle_workflow("mass_pretrain", "inference.json", "infer", initialize=True, **{**settings, **overrides})
    wf.run()
    wf.finalize()
    return out


def test_reference_label_onto_query_keeps_ids_grid_and_one_component_per_class(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ckpt = tmp_path / "weights.pt"
    torch.save({"model": build_network("tiny").state_dict()}, ckpt)  # the release's container layout
    out = _run(tmp_path, checkpoint=str(ckpt), labels=[4])
    (seg,) = out.glob("*_seg.nii.gz")
    query = nib.load(str(DEMO / "mni152_t1.nii.gz"))
    img = nib.load(str(seg))
    assert img.shape == query.shape  # back on the query's own grid
    np.testing.assert_allclose(img.affine, query.affine, atol=1e-4)
    a = np.asarray(img.dataobj)
    assert set(np.unique(a).tolist()) <= {0, 4}  # the reference's label id, nothing invented
    # one class: its largest component alone on the network grid (26-connectivity). Back on the query's
    # finer grid, MONAI's nearest-neighbour inversion may leave slivers of a few voxels where the coarse
    # grid ends at the volume's border (here 18-24 voxels beside a blob of 10^5 that touches it), so the
    # largest component holds all but a sliver of the class (without the step: 128 components on 4 mm).
    lab, n = ndimage.label(a == 4, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(lab.ravel())[1:]
    assert n >= 1 and sizes.max() >= 0.99 * sizes.sum(), sizes
    assert 0 < (a == 4).mean() < 0.5  # an answer, neither empty nor everything


def test_a_probability_map_as_reference_label_is_refused_with_its_file(tmp_path: Path) -> None:
    lab = nib.load(str(DEMO / "colin27_seg.nii.gz"))
    soft = (np.asarray(lab.dataobj) > 0).astype(np.float32) * 0.7
    bad = tmp_path / "soft_label.nii.gz"
    nib.save(nib.Nifti1Image(soft, lab.affine), str(bad))
    with pytest.raises(Exception) as raised:  # MONAI's Compose and the engine wrap it in RuntimeErrors
        _run(tmp_path, ref_label=str(bad), checkpoint="")
    chain, e = [], raised.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    errors = [e for e in chain if isinstance(e, VolumeError)]
    assert errors and str(errors[0]).startswith(str(bad)) and "non-integer" in str(errors[0])
