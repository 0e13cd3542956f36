"""In-context sliding-window inference and post-processing."""

from __future__ import annotations

import itertools

import pytest
import torch

from components.inference.incontext import InContextInferer, binarize, fit_roi


class Task:
    """Minimal task embedding: one scale per mask channel; records device moves."""

    def __init__(self, scales: list[float]) -> None:
        self.scales = torch.tensor(scales)
        self.moves = 0

    def to(self, device):
        self.moves += 1
        return self


class PointwiseNet:
    """Translation-equivariant stand-in: logits[m] = scale[m] * (query - 0.5); logs every window."""

    max_window = 64

    def __init__(self) -> None:
        self.windows: list[tuple[int, ...]] = []

    def segment(self, window: torch.Tensor, task: Task) -> torch.Tensor:
        self.windows.append(tuple(window.shape))
        return task.scales.view(1, -1, 1, 1, 1) * (window - 0.5)


class WindowMeanNet(PointwiseNet):
    """Context-dependent stand-in (like instance norm): logits = query - mean(window)."""

    def segment(self, window: torch.Tensor, task: Task) -> torch.Tensor:
        self.windows.append(tuple(window.shape))
        return task.scales.view(1, -1, 1, 1, 1) * (window - window.mean(dim=(2, 3, 4), keepdim=True))


@pytest.mark.parametrize("size", [(50, 37, 70), (20, 20, 20), (48, 48, 48)])
def test_windowed_output_equals_direct_output_for_an_equivariant_net(size):
    torch.manual_seed(0)
    query = torch.rand(2, 1, *size)
    net, task = PointwiseNet(), Task([1.0, -3.0, 7.0])
    logits = InContextInferer(roi_size=32, output="logits")(query, net, task)
    probs = InContextInferer(roi_size=32)(query, net, task)
    direct = PointwiseNet().segment(query, task)
    assert logits.shape == (2, 3, *size) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, direct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(probs, torch.sigmoid(direct), rtol=1e-5, atol=1e-6)
    # every window is a legal network input: each dim a multiple of 16, never above the roi
    assert all(w[2:] == fit_roi(size, 32) for w in net.windows)
    assert all(d % 16 == 0 and d <= 32 for w in net.windows for d in w[2:])
    assert task.moves == 2  # the same task object is handed to every window, moved once per call


def test_fit_roi_shrinks_to_small_volumes():
    assert fit_roi((300, 70, 16), 128) == (128, 80, 32)
    assert fit_roi((10, 10, 10), (16, 64, 64)) == (16, 32, 32)
    with pytest.raises(ValueError, match="multiple of 16"):
        fit_roi((64, 64, 64), 100)


def _seam_ratio(volume: torch.Tensor, boundaries: list[int]) -> float:
    """Largest voxel-to-voxel jump across window boundary planes / largest jump elsewhere (along D).

    Only the interior in H and W: in the outer few voxels of the volume every window has a tiny
    Gaussian weight, MONAI clamps the weights at 1e-3 and the blend falls back to a plain mean.
    """
    inner = volume[..., 8:-8, 8:-8]
    steps = (inner[:, :, 1:] - inner[:, :, :-1]).abs().amax(dim=(0, 1, 3, 4))
    at = torch.zeros_like(steps, dtype=torch.bool)
    for b in boundaries:
        at[b - 1] = True
    return (steps[at].max() / steps[~at].max()).item()


def test_gaussian_blending_leaves_no_seams_for_a_context_dependent_net():
    """A net whose output depends on the whole window (like instance norm) gives each window a
    different offset. Plain averaging then jumps where a window starts or ends; the default
    Gaussian blending at overlap 0.5 stays as smooth as the ramp itself."""
    d = torch.linspace(0, 1, 48).view(1, 1, 48, 1, 1)
    query = d.expand(1, 1, 48, 48, 48).contiguous()
    task = Task([8.0])
    boundaries = [16, 32]  # windows of 32 at 0 and 16 along each dim
    smooth = InContextInferer(roi_size=32, output="logits")(query, WindowMeanNet(), task)
    seamy = InContextInferer(roi_size=32, output="logits", mode="constant")(query, WindowMeanNet(), task)
    assert smooth.shape == seamy.shape == (1, 1, 48, 48, 48)
    assert _seam_ratio(seamy, boundaries) > 2.0  # the measure sees seams when there are some
    assert _seam_ratio(smooth, boundaries) < 1.2


class Recording:
    """Wraps a network and keeps every window it is given with its probabilities."""

    def __init__(self, net) -> None:
        self.net, self.max_window, self.calls = net, net.max_window, []

    def segment(self, window: torch.Tensor, task) -> torch.Tensor:
        logits = self.net.segment(window, task)
        self.calls.append((window.clone(), torch.sigmoid(logits.float())))
        return logits


@pytest.fixture(scope="module")
def tiny_case():
    from components.network.nets import build_network

    torch.manual_seed(0)
    net = build_network("tiny").eval()
    query = torch.nn.functional.avg_pool3d(torch.randn(1, 1, 48, 48, 48), 5, 1, 2) * 3  # 1.5 x window
    ref = torch.randn(1, 1, 32, 32, 32)
    masks = torch.zeros(1, 2, 32, 32, 32)
    masks[:, 0, 8:20, 8:20, 8:20] = 1
    masks[:, 1, 14:30, 4:12, 10:28] = 1
    recorder = Recording(net)
    with torch.no_grad():
        task = net.encode_task(ref, masks)
        out = InContextInferer(roi_size=32)(query, recorder, task)
    return net, query, task, out, recorder.calls


def test_real_network_windowed_output_is_placed_and_blended_correctly(tiny_case):
    net, query, task, out, calls = tiny_case
    assert out.shape == (1, 2, 48, 48, 48) and torch.isfinite(out).all()
    assert 0.0 <= out.min() and out.max() <= 1.0
    # the network saw eight 32^3 windows starting at 0 and 16 in each dim: find where each came from
    starts = list(itertools.product((0, 16), repeat=3))
    placed = {}
    for window, probs in calls:
        where = [
            s for s in starts if torch.equal(window, query[..., s[0] : s[0] + 32, s[1] : s[1] + 32, s[2] : s[2] + 32])
        ]
        assert len(where) == 1
        placed[where[0]] = probs
    assert sorted(placed) == starts
    lo = torch.full_like(out, float("inf"))
    hi = torch.full_like(out, float("-inf"))
    for (z, y, x), p in placed.items():
        box = (..., slice(z, z + 32), slice(y, y + 32), slice(x, x + 32))
        lo[box] = torch.minimum(lo[box], p)
        hi[box] = torch.maximum(hi[box], p)
    # the outer 16^3 corners are seen by one window only: identical to that window's single pass
    torch.testing.assert_close(out[..., :16, :16, :16], placed[(0, 0, 0)][..., :16, :16, :16], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[..., 32:, 32:, 32:], placed[(16, 16, 16)][..., 16:, 16:, 16:], rtol=1e-5, atol=1e-6)
    # elsewhere the result is a weighted mean of the windows covering the voxel: never outside them
    assert (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()
    # and blending really happened in the shared regions (not one window overwriting the others)
    shared = (hi - lo) > 1e-3
    assert shared.float().mean() > 0.1
    assert ((out[shared] - lo[shared]).abs() > 1e-6).float().mean() > 0.5
    assert ((hi[shared] - out[shared]).abs() > 1e-6).float().mean() > 0.5


def test_windowed_equals_single_pass_when_the_volume_fits_one_window(tiny_case):
    net, query, task, _, _ = tiny_case
    small = query[..., :32, :32, :32]
    with torch.no_grad():
        out = InContextInferer(roi_size=64)(small, net, task)  # window shrinks to the 32^3 volume
        torch.testing.assert_close(out, torch.sigmoid(net.segment(small, task)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="task embedding"):
        InContextInferer(roi_size=32)(small, net)
    with pytest.raises(ValueError, match="max_window"):
        InContextInferer(roi_size=128)(small, net, task)


def test_largest_component_keeps_exactly_the_largest_blob_per_channel():
    probs = torch.zeros(1, 3, 20, 20, 20)
    probs[0, 0, 1:4, 1:4, 1:4] = 0.9  # 27 voxels
    probs[0, 0, 10:16, 10:16, 10:16] = 0.8  # 216 voxels: kept in channel 0
    probs[0, 1, 2:10, 2:10, 2:10] = 0.7  # 512: kept in channel 1
    probs[0, 1, 15:19, 15:19, 15:19] = 0.99  # 64, more confident but smaller
    probs[0, 2, 5:8, 5:8, 5:8] = 0.49  # below the threshold: channel 2 empty
    probs[0, 2, 0, 0, 0] = 0.5  # >= 0.5 counts as foreground
    raw = binarize(probs)
    assert raw.dtype == torch.uint8 and raw.shape == probs.shape
    assert raw[0, 0].sum() == 27 + 216 and raw[0, 1].sum() == 512 + 64 and raw[0, 2].sum() == 1
    kept = binarize(probs, largest_component=True)
    expected = torch.zeros_like(raw)
    expected[0, 0, 10:16, 10:16, 10:16] = 1
    expected[0, 1, 2:10, 2:10, 2:10] = 1
    expected[0, 2, 0, 0, 0] = 1
    assert torch.equal(kept, expected)
    # unbatched input and logits give the same masks
    assert torch.equal(
        binarize(torch.logit(probs[0].clamp(1e-6, 1 - 1e-6)), largest_component=True, from_logits=True), expected[0]
    )


def test_classes_are_decoded_in_chunks_of_max_classes_per_pass():
    """Masks of one pass interact in the decoder: 11 classes with the default 8 per pass give exactly the
    output of two separate passes (8 + 3), a single pass differs, and 8 classes or fewer stay one pass."""
    from components.network.nets import build_network

    torch.manual_seed(0)
    net = build_network("tiny").eval()
    query, ref = torch.randn(1, 1, 32, 32, 32), torch.randn(1, 1, 32, 32, 32)
    masks = torch.zeros(1, 11, 32, 32, 32)
    for m in range(11):
        masks[0, m, 2 * m : 2 * m + 8, 4:20, 6:22] = 1
    with torch.no_grad():
        task = net.encode_task(ref, masks)
        chunked = InContextInferer(roi_size=32, output="logits")(query, net, task)
        one_pass = InContextInferer(roi_size=32, output="logits", max_classes_per_pass=None)(query, net, task)
        first, rest = net.segment(query, task.select(range(8))), net.segment(query, task.select(range(8, 11)))
        small = task.select(range(5))
        small_default = InContextInferer(roi_size=32, output="logits")(query, net, small)
        small_direct = net.segment(query, small)
    torch.testing.assert_close(chunked, torch.cat([first, rest], dim=1), rtol=1e-5, atol=1e-5)
    assert (chunked - one_pass).abs().max() > 1e-4
    torch.testing.assert_close(small_default, small_direct, rtol=1e-5, atol=1e-5)
