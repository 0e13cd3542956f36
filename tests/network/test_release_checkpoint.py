"""Importing checkpoints in the authors' release format; conformance with the released code's outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components.network.nets import FixedClassNet, build_network
from components.network.release_checkpoint import (
    ReleaseCheckpointError,
    load_release_checkpoint,
    network_from_release_checkpoint,
    preset_of_checkpoint,
    read_release_state_dict,
)

torch.set_num_threads(2)

# The bound: relative L2 <= 1e-4, float32 on CPU. Measured: task stages 2e-7 to 1.3e-6,
# logits 2.4e-6 to 1.4e-5 depending on the machine's kernels and layout (docs/network.md).
TOL_TASK = (1e-4, 1e-4, 1e-4)
TOL_LOGITS = 1e-4


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def reference(shared_dir: Path) -> dict:
    ref = shared_dir / "reference"
    return {"ckpt": ref / "official_checkpoint.pth", "io": torch.load(ref / "io.pt", weights_only=True)}


def test_conformance_with_released_outputs(reference):
    net, info = network_from_release_checkpoint(reference["ckpt"], memory_efficient=True)
    assert info["source"] == "ema_model" and info["inferred_config"]["channels"] == (8, 16, 32, 64, 128)
    io = reference["io"]
    net.eval()
    with torch.no_grad():
        task = net.encode_task(io["reference_image"], io["reference_masks"])
        logits = net.segment(io["query_image"], task)
        net.memory_efficient = False  # the straightforward path (full-resolution up-sampling)
        plain = net.encode_task(io["reference_image"], io["reference_masks"])
    for tokens in (task.tokens, plain.tokens):
        errors = [_rel(a, b) for a, b in zip(tokens, io["task_embeddings"])]
        assert all(e <= t for e, t in zip(errors, TOL_TASK)), errors
    for a, b in zip(task.tokens, plain.tokens):  # both paths agree to float32 rounding
        assert _rel(a, b) < 1e-5
    assert _rel(logits, io["logits"]) <= TOL_LOGITS
    # the sign decides the segmentation: every voxel agrees
    assert ((logits > 0) == (io["logits"] > 0)).float().mean() > 0.9999


def test_ema_weights_preferred_and_plain_weights_selectable(reference):
    ema, src_ema = read_release_state_dict(reference["ckpt"], return_source=True)
    plain, src_plain = read_release_state_dict(reference["ckpt"], prefer_ema=False, return_source=True)
    assert (src_ema, src_plain) == ("ema_model", "model")
    assert not torch.equal(ema["out.norm.weight"], plain["out.norm.weight"])
    assert torch.equal(ema["encoder.inc.conv1.weight"], plain["encoder.inc.conv1.weight"])


def test_encoder_and_fixed_class_net_load_from_release(reference):
    state = read_release_state_dict(reference["ckpt"])
    encoder = build_network("small").encoder
    info = load_release_checkpoint(reference["ckpt"], encoder)
    assert info["loaded"] == len(encoder.state_dict())
    assert torch.equal(encoder.down4.conv[1].conv1.conv.weight, state["encoder.down4.conv.1.conv1.conv.weight"])
    fixed = FixedClassNet("small", num_classes=3)
    info = load_release_checkpoint(reference["ckpt"], fixed)
    assert info["skipped"] == ["task_prior_0", "task_prior_1", "task_prior_2"]  # 73 release classes != 3
    assert torch.equal(fixed.out.norm.weight, state["out.norm.weight"])
    fixed73 = FixedClassNet("small", num_classes=73)
    assert load_release_checkpoint(reference["ckpt"], fixed73)["skipped"] == []
    assert torch.equal(fixed73.task_prior_1.detach(), state["task_prior_1"])


@pytest.fixture()
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_network("tiny").state_dict()


@pytest.mark.parametrize("container", ["model", "ema_model", "ema_state_dict", "bare"])
def test_container_variants_and_wrapper_prefixes(tmp_path, tiny_state, container):
    prefixed = {f"module._orig_mod.{k}": v for k, v in tiny_state.items()}
    payload = prefixed if container == "bare" else {container: prefixed, "epoch": 5, "config": {"x": 1}}
    if container == "ema_state_dict":
        payload["model"] = {k: torch.zeros_like(v) for k, v in prefixed.items()}  # must not be chosen
        payload[container]["module.n_averaged"] = torch.tensor(3)  # AveragedModel bookkeeping
    path = tmp_path / "ckpt.pth"
    torch.save(payload, path)
    net = build_network("tiny")
    info = load_release_checkpoint(path, net)
    for k, v in net.state_dict().items():
        assert torch.equal(v, tiny_state[k]), k
    assert info["source"] == ("<bare state dict>" if container == "bare" else container)


def test_corrupt_or_foreign_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"\x00\x01 definitely not a checkpoint")
    with pytest.raises(ReleaseCheckpointError, match=r"broken\.pth: not a readable PyTorch checkpoint"):
        read_release_state_dict(bad)
    with pytest.raises(ReleaseCheckpointError, match=r"missing\.pth: no such checkpoint file"):
        read_release_state_dict(tmp_path / "missing.pth")
    foreign = tmp_path / "foreign.pth"
    torch.save({"optimizer": {"lr": 0.1}, "epoch": 3}, foreign)
    with pytest.raises(ReleaseCheckpointError, match=r"foreign\.pth: no state dict found.*'epoch', 'optimizer'"):
        read_release_state_dict(foreign)


def test_mismatched_checkpoint_lists_keys_and_shapes(tmp_path, tiny_state):
    state = dict(tiny_state)
    state.pop("out.norm.bias")
    state["decoder.extra.weight"] = torch.zeros(2)
    state["encoder.inc.conv1.weight"] = torch.zeros(5, 1, 3, 3, 3)
    path = tmp_path / "odd.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ReleaseCheckpointError) as err:
        load_release_checkpoint(path, build_network("tiny"))
    text = str(err.value)
    assert "odd.pth" in text
    assert "missing keys (1): out.norm.bias" in text
    assert "unexpected keys (1): decoder.extra.weight" in text
    assert "encoder.inc.conv1.weight: checkpoint [5, 1, 3, 3, 3] vs network [4, 1, 3, 3, 3]" in text
    assert err.value.missing == ["out.norm.bias"]


@pytest.mark.parametrize("container", ["model", "ema_model", "ema_state_dict", "bare", "pretrain_bundle"])
def test_preset_of_checkpoint_reads_every_container(tmp_path, tiny_state, container):
    if container == "bare":
        payload: dict = dict(tiny_state)
    elif container == "pretrain_bundle":  # our mass_pretrain model.pt: {"model", "ema_model"}
        payload = {"model": dict(tiny_state), "ema_model": dict(tiny_state)}
    else:
        payload = {container: {f"module.{k}": v for k, v in tiny_state.items()}}
    torch.save(payload, tmp_path / "c.pt")
    assert preset_of_checkpoint(tmp_path / "c.pt") == "tiny"


def test_preset_of_checkpoint_prefers_ema_and_checks_the_whole_network(tmp_path, tiny_state, reference):
    assert preset_of_checkpoint(reference["ckpt"]) == "small"
    small = build_network("small").state_dict()
    torch.save({"model": small, "ema_model": tiny_state}, tmp_path / "both.pt")
    assert preset_of_checkpoint(tmp_path / "both.pt") == "tiny"
    assert preset_of_checkpoint(tmp_path / "both.pt", prefer_ema=False) == "small"
    # same encoder as "tiny" but 7 task-prior tokens: not the tiny network, though its encoder is
    torch.save(build_network("tiny", tn=7).state_dict(), tmp_path / "tn7.pt")
    with pytest.raises(ReleaseCheckpointError, match="tn 7.*match no preset"):
        preset_of_checkpoint(tmp_path / "tn7.pt")
    assert preset_of_checkpoint(tmp_path / "tn7.pt", encoder_only=True) == "tiny"
    # an encoder-only state dict (what a probe may save) is matched on the encoder
    torch.save({k: v for k, v in tiny_state.items() if k.startswith("encoder.")}, tmp_path / "enc.pt")
    assert preset_of_checkpoint(tmp_path / "enc.pt") == "tiny"
    wider = build_network("tiny", channels=(4, 8, 16, 32, 96)).state_dict()
    torch.save(wider, tmp_path / "wider.pt")
    with pytest.raises(ValueError, match="match no preset"):
        preset_of_checkpoint(tmp_path / "wider.pt", encoder_only=True)
