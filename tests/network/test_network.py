"""Behaviour of the MASS network: presets, sub-models, task embeddings, TorchScript tracing."""

from __future__ import annotations

import json

import pytest
import torch

from components.network.nets import PRESETS, FixedClassNet, MASSNet, SpatialSizeError, build_network
from components.network.task_embedding import TaskEmbedding, TaskEmbeddingError
from components.network.task_encoder import pool_masks_to_grid

torch.set_num_threads(2)
SHAPE = (16, 32, 32)  # smallest grid the tiny preset handles comfortably (deepest map 1x2x2)


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def tiny() -> MASSNet:
    torch.manual_seed(0)
    return build_network("tiny").eval()


@pytest.fixture(scope="module")
def encoded(tiny, inputs) -> tuple[TaskEmbedding, torch.Tensor]:
    """Task embedding (named masks) and logits of the tiny net on the shared inputs, computed once."""
    query, ref, masks = inputs
    with torch.no_grad():
        task = tiny.encode_task(ref, masks, names=["liver", "spleen"])
        return task, tiny.segment(query, task)


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    query = torch.randn(1, 1, *SHAPE, generator=g)
    ref = torch.randn(1, 1, *SHAPE, generator=g)
    masks = torch.zeros(1, 2, *SHAPE)
    masks[0, 0, 2:10, 6:18, 5:25] = 1
    masks[0, 1, 9:15, 10:30, 2:12] = 1
    return query, ref, masks


def test_paper_preset_maps_onto_release_state_dict(shared_dir):
    spec = json.loads((shared_dir / "reference" / "official_paper_config_state_dict_shapes.json").read_text())
    with torch.device("meta"):
        net = build_network("paper")
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert ours == spec["state_dict_shapes"]
    assert len(ours) == 572
    assert _n_params(net) == spec["parameters"]["total"] == 120_126_373
    groups = {"encoder": "encoder", "decoder": "decoder", "task_embedding": "task_encoding", "out": "output_head"}
    for ours_name, ref_name in groups.items():
        assert _n_params(getattr(net, ours_name)) == spec["parameters"][ref_name]


@pytest.mark.slow
def test_paper_preset_runs_at_128_cubed_on_meta_device():
    """Shape flow of the full-size model at the largest window, without allocating memory."""
    torch.manual_seed(0)  # the tiny fixture may not have run yet
    with torch.device("meta"):
        net = build_network("paper").eval()
        image, masks = torch.empty(1, 1, 128, 128, 128), torch.empty(1, 3, 128, 128, 128)
        with torch.no_grad():
            task = net.encode_task(image, masks)
            logits = net.segment(image, task)
    assert [tuple(t.shape) for t in task.tokens] == [(1, 3, 11, 512), (1, 3, 11, 256), (1, 3, 11, 128)]
    assert logits.shape == (1, 3, 128, 128, 128)


def test_small_preset_parameter_count_matches_manifest(shared_dir):
    manifest = json.loads((shared_dir / "reference" / "manifest.json").read_text())
    with torch.device("meta"):
        net = build_network("small")
    assert list(net.channels) == manifest["channels"]
    assert _n_params(net) == manifest["num_parameters"] == 14_281_429


def test_encoder_pyramid_shapes_deepest_last(tiny, inputs):
    feats = tiny.encoder(inputs[0])
    chans = list(PRESETS["tiny"]["channels"])
    assert tiny.encoder.out_channels == chans
    assert [tuple(f.shape) for f in feats] == [(1, c, *(n >> i for n in SHAPE)) for i, c in enumerate(chans)]


def test_forward_shapes_and_sub_model_sizes(tiny, encoded):
    task, logits = encoded
    assert [tuple(t.shape) for t in task.tokens] == [(1, 2, 11, 64), (1, 2, 11, 32), (1, 2, 11, 16)]
    assert logits.shape == (1, 2, *SHAPE) and torch.isfinite(logits).all()
    fixed = FixedClassNet("tiny", num_classes=5)
    core = _n_params(tiny.encoder) + _n_params(tiny.decoder) + _n_params(tiny.out)
    assert _n_params(fixed) == core + 5 * 11 * (64 + 32 + 16)
    assert _n_params(tiny) == core + _n_params(tiny.task_embedding)


@pytest.mark.parametrize("size", [(1, 1, 24, 32, 32), (1, 1, 32, 32, 80)])
def test_bad_spatial_size_is_a_clear_error(tiny, size):
    with pytest.raises(SpatialSizeError, match="multiple of 16"):
        tiny.segment(torch.zeros(size), TaskEmbedding([torch.zeros(1, 1, 11, c) for c in (64, 32, 16)]))


def test_memory_efficient_equals_straightforward_values_and_gradients(inputs):
    _, ref, masks = inputs
    torch.manual_seed(0)
    net = build_network("tiny").train()
    results = {}
    for mode in (False, True):
        net.memory_efficient = mode
        net.zero_grad()
        task = net.encode_task(ref, masks)
        sum(t.square().mean() for t in task.tokens).backward()
        grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
        results[mode] = ([t.detach() for t in task.tokens], grads)
    (plain, g_plain), (lean, g_lean) = results[False], results[True]
    for a, b in zip(lean, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert g_plain.keys() == g_lean.keys() and len(g_plain) > 100
    scale = max(g.abs().max() for g in g_plain.values())
    for k in g_plain:
        torch.testing.assert_close(g_lean[k], g_plain[k], rtol=1e-4, atol=1e-5 * scale, msg=k)


def test_channels_last_inference_equals_the_autograd_path(tiny, inputs, encoded):
    """Without autograd on CPU the U-Net maps run channels-last (two-pass instance norms); the logits equal
    those of the default-layout path that training takes, and a map of a 1-channel input of odd strides
    (a sliding-window patch) takes the same route."""
    query, _, _ = inputs
    task, logits = encoded
    seen = []
    hooks = [
        stage.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        for stage in (tiny.decoder.up1, tiny.decoder.up4)
    ]
    with torch.no_grad():
        feats = tiny.encoder(query)
        tiny.segment(query, task)
    for h in hooks:
        h.remove()
    for x in feats[:3] + seen:  # encoder maps and the decoder's, from the token fusion on
        assert x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    plain = tiny.segment(query, task).detach()  # grad enabled: default layout, PyTorch's instance norm
    assert (logits - plain).norm() / plain.norm() < 1e-5
    patch = torch.randn(1, 2, *SHAPE)[:, 1:]  # same shape, channel stride 16*32*32
    with torch.no_grad():
        torch.testing.assert_close(tiny.segment(patch, task), tiny.segment(patch.contiguous(), task))


def test_mask_pooling_is_adjoint_of_trilinear_upsampling():
    g = torch.Generator().manual_seed(3)
    feat = torch.randn(1, 3, 4, 2, 8, generator=g, dtype=torch.float64)
    masks = (torch.rand(1, 2, 32, 16, 64, generator=g) > 0.7).double()
    up = torch.nn.functional.interpolate(feat, size=(32, 16, 64), mode="trilinear", align_corners=True)
    direct = torch.einsum("bcxyz,bmxyz->bmc", up, masks)
    pooled = torch.einsum("bcxyz,bmxyz->bmc", feat, pool_masks_to_grid(masks, (4, 2, 8)))
    torch.testing.assert_close(pooled, direct, rtol=1e-10, atol=1e-10)


def test_saved_task_embedding_reloads_and_gives_identical_logits(tiny, inputs, encoded, tmp_path):
    query = inputs[0]
    task, before = encoded
    path = task.save(tmp_path / "task.pt")
    raw = torch.load(path, weights_only=True)  # plain tensors + metadata only
    assert raw["names"] == ["liver", "spleen"]
    again = TaskEmbedding.load(path)
    assert again.names == ["liver", "spleen"] and again.num_masks == 2
    with torch.no_grad():
        after = tiny.segment(query, again)
    assert torch.equal(before, after)
    spleen = again.select([1])
    assert spleen.names == ["spleen"] and torch.equal(spleen.tokens[0][:, 0], again.tokens[0][:, 1])


def test_task_embedding_file_errors(tmp_path):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(TaskEmbeddingError, match="garbage.pt"):
        TaskEmbedding.load(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(TaskEmbeddingError, match="not a task-embedding file"):
        TaskEmbedding.load(other)


def test_averaging_identical_references_equals_one_reference(tiny, inputs, encoded):
    query, ref, masks = inputs
    one, logits = encoded
    with torch.no_grad():
        two = tiny.encode_task(ref.repeat(2, 1, 1, 1, 1), masks.repeat(2, 1, 1, 1, 1))
    for a, b in zip(two.mean_over_references().tokens, one.tokens):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)  # batched conv rounding
    for a, b in zip(TaskEmbedding.average([one, one, one]).tokens, one.tokens):
        torch.testing.assert_close(a, b)
    other = TaskEmbedding([torch.randn_like(t) for t in one.tokens])
    for a, b, c in zip(TaskEmbedding.average([one, other]).tokens, one.tokens, other.tokens):
        torch.testing.assert_close(a, (b + c) / 2)
    with torch.no_grad():
        batch = tiny.segment(torch.cat([query, torch.flip(query, dims=[2])]), one)  # one embedding, 2 queries
    torch.testing.assert_close(batch[:1], logits, rtol=1e-4, atol=1e-4)  # batched conv rounding
    assert not torch.allclose(batch[1], batch[0])


def test_fixed_class_net_from_task_embedding_matches_incontext(tiny, inputs, encoded):
    query = inputs[0]
    task, expected = encoded
    with torch.no_grad():
        fixed = FixedClassNet.from_incontext(tiny, task).eval()
        got = fixed(query)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert fixed.num_classes == 2 and all(p.requires_grad for p in fixed.class_tokens())


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_trace_encoder_and_fixed_class_net(tiny, inputs):
    query = inputs[0][..., :16, :]  # 16x16x32 keeps tracing cheap
    other = torch.randn_like(query)
    with torch.no_grad():
        traced_enc = torch.jit.trace(tiny.encoder, query, check_trace=False, strict=False)  # list output
        for a, b in zip(traced_enc(other), tiny.encoder(other)):
            torch.testing.assert_close(a, b)
        fixed = FixedClassNet("tiny", num_classes=3).eval()
        traced = torch.jit.trace(fixed, query, check_trace=False)
        torch.testing.assert_close(traced(other), fixed(other), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_script_encoder_and_fixed_class_net(tiny, inputs, tmp_path):
    query = inputs[0][..., :16, :]
    with torch.no_grad():
        for a, b in zip(torch.jit.script(tiny.encoder)(query), tiny.encoder(query)):
            torch.testing.assert_close(a, b)
        fixed = FixedClassNet("tiny", num_classes=3).eval()
        torch.jit.script(fixed).save(str(tmp_path / "model.ts"))  # what MONAI ckpt_export does
        loaded = torch.jit.load(str(tmp_path / "model.ts"))
        torch.testing.assert_close(loaded(query), fixed(query), rtol=1e-5, atol=1e-5)


def test_task_embedding_from_metatensors_loads_weights_only(tmp_path):
    """Tokens computed from MONAI MetaTensors save as plain tensors (weights_only loading refuses subclasses)."""
    from monai.data import MetaTensor

    from components.network.task_embedding import TaskEmbedding

    tokens = [MetaTensor(torch.randn(1, 2, 11, 8)), MetaTensor(torch.randn(1, 2, 11, 4))]
    path = TaskEmbedding(tokens, None, {}).save(tmp_path / "task.pt")
    loaded = TaskEmbedding.load(path)
    assert all(type(t) is torch.Tensor for t in loaded.tokens)
    assert all(torch.equal(a, b.as_tensor()) for a, b in zip(loaded.tokens, tokens))
