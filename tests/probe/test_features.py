"""Frozen-encoder feature cache and encoder loading on real volumes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from monai.transforms import Compose, EnsureTyped, Orientationd, ResizeWithPadOrCropd, Spacingd

from components.checks.errors import error_message
from components.data.intensity import ModalityNormalized
from components.data.loading import CheckVolumed, LoadVolumed
from components.network.release_checkpoint import ReleaseCheckpointError, preset_of_checkpoint
from components.probe.features import (
    FeatureCache,
    LoadFeatured,
    build_encoder,
    encoder_fingerprint,
)


def _preprocessing(size: int = 32) -> Compose:
    return Compose(
        [
            LoadVolumed("image"),
            CheckVolumed("image"),
            EnsureTyped("image", dtype=torch.float32),
            Orientationd("image", axcodes="RAS", labels=None),
            Spacingd("image", pixdim=(4.0, 4.0, 4.0)),
            ModalityNormalized("image", modality="MR"),
            ResizeWithPadOrCropd("image", (size, size, size)),
        ]
    )


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def items(demo_data: Path) -> list[dict]:
    return [
        {"image": str(demo_data / "colin27_t1.nii.gz"), "label": 0, "modality": "MR"},
        {"image": str(demo_data / "itk_t1.nii.gz"), "label": 1, "modality": "MR"},
        {"image": str(demo_data / "head_ct.nii.gz"), "label": 1, "modality": "CT"},
    ]


def test_cached_features_equal_on_the_fly_features(tmp_path, items):
    torch.manual_seed(0)
    enc = build_encoder("tiny")
    cache = FeatureCache(enc, _preprocessing(), tmp_path / "cache", signature={"size": 32}, batch_size=2)
    items = [items[0], items[2]]  # an MR and a CT
    out = cache.extract(items)
    assert len(out) == 2 and len(list((tmp_path / "cache").glob("*.pt"))) == 2
    loaded = LoadFeatured("image")(out[1])["image"]
    assert loaded.shape == (64, 2, 2, 2) and type(loaded) is torch.Tensor
    for item, cached in zip(items, out):
        direct = cache.features(item)
        feat = LoadFeatured("image")(cached)["image"]
        torch.testing.assert_close(feat, direct, rtol=1e-5, atol=1e-5)
        # and the same as running the encoder by hand on the preprocessed image
        x = _preprocessing()(dict(item))["image"].as_tensor()[None]
        with torch.no_grad():
            torch.testing.assert_close(feat, enc.eval()(x)[-1][0], rtol=1e-5, atol=1e-5)
        assert cached["source"] == item["image"] and cached["label"] == item["label"]


def test_cache_is_reused_and_invalidated_by_encoder_or_settings(tmp_path, items):
    torch.manual_seed(0)
    enc = build_encoder("tiny")
    cache = FeatureCache(enc, _preprocessing(), tmp_path / "c", signature={"size": 32})
    first = cache.extract(items[:2])
    stamps = {p: os.stat(p).st_mtime_ns for p in (o["image"] for o in first)}
    again = FeatureCache(enc, _preprocessing(), tmp_path / "c", signature={"size": 32}).extract(items[:2])
    assert [o["image"] for o in again] == [o["image"] for o in first]
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps  # not recomputed
    other_setting = FeatureCache(enc, _preprocessing(), tmp_path / "c", signature={"size": 48}).extract(items[:1])
    assert other_setting[0]["image"] not in stamps
    before = encoder_fingerprint(enc)
    with torch.no_grad():
        next(enc.parameters()).add_(1.0)
    assert encoder_fingerprint(enc) != before
    changed = FeatureCache(enc, _preprocessing(), tmp_path / "c", signature={"size": 32}).extract(items[:1])
    assert changed[0]["image"] not in stamps


def test_unreadable_image_is_skipped_and_named(tmp_path, items, caplog):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    cache = FeatureCache(build_encoder("tiny"), _preprocessing(), tmp_path / "c")
    out = cache.extract([{"image": str(bad), "label": 0, "row": "d.csv, line 2"}, items[0]])
    assert len(out) == 1 and out[0]["source"] == items[0]["image"]
    assert f"d.csv, line 2: {bad}: cannot be read as a volume" in caplog.text
    with pytest.raises(RuntimeError, match="no image could be encoded"):
        cache.extract([{"image": str(bad), "label": 0, "row": "d.csv, line 2"}])


def test_encoder_loads_from_release_checkpoint_and_pretrain_container(tmp_path, shared_dir):
    ckpt = shared_dir / "reference" / "official_checkpoint.pth"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    key = "ema_model" if "ema_model" in state else "model"
    enc = build_encoder("small", ckpt)
    for k, v in enc.state_dict().items():
        assert torch.equal(v, state[key][f"encoder.{k}"]), k
    assert build_encoder("auto", ckpt).out_channels == enc.out_channels
    assert preset_of_checkpoint(ckpt) == "small"
    # our pretraining bundle's container: {"model": ..., "ema_model": ...}, EMA preferred
    model = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    ema = {k: v + 1.0 if v.is_floating_point() else v for k, v in model.items()}
    torch.save({"model": model, "ema_model": ema}, tmp_path / "pretrain.pt")
    loaded = build_encoder("small", tmp_path / "pretrain.pt")
    k0 = next(iter(loaded.state_dict()))
    assert torch.equal(loaded.state_dict()[k0], ema[f"encoder.{k0}"])
    assert torch.equal(
        build_encoder("small", tmp_path / "pretrain.pt", prefer_ema=False).state_dict()[k0], model[f"encoder.{k0}"]
    )
    with pytest.raises(ReleaseCheckpointError, match="does not fit Encoder"):
        build_encoder("tiny", ckpt)
    with pytest.raises(ReleaseCheckpointError, match="no such checkpoint file"):
        build_encoder("small", tmp_path / "missing.pt")


def test_unreadable_volume_in_the_preprocessing_is_named(demo_data):
    with pytest.raises(RuntimeError) as err:
        _preprocessing()({"image": str(demo_data / "nope.nii.gz")})
    assert error_message(err.value).startswith(f"{demo_data / 'nope.nii.gz'}: file does not exist")
