"""Weight EMA of the pretraining bundle (Ignite's ``EMAHandler``): conformance with the update rule
``ema = decay * ema + (1 - decay) * w`` after every optimiser step, buffers copied or averaged the
same way (``handle_buffers``: "copy" / "update", as the bundle config says), and the
``ema_model`` checkpoint layout (same keys as the network, readable by the release loader)."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events

from components.network.nets import build_network
from components.network.release_checkpoint import load_release_checkpoint
from tests._bundles import bundle_workflow
from tests.pretrain._util import masksets_from_labels, tiny_overrides

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mask_dir(tmp_path_factory):
    return masksets_from_labels(tmp_path_factory.mktemp("masks"), max_ids=12)


def test_ema_handler_follows_the_update_rule_bitwise_and_saves_plain_state_dict(tmp_path, mask_dir):
    wf = bundle_workflow(
        "mass_pretrain",
        "train.json",
        "train",
        **tiny_overrides(tmp_path, mask_dir, max_epochs=2, iters_per_epoch=2, ema_decay=0.99),
    )
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    net = wf.parser.get_parsed_content("network")
    handler = wf.parser.get_parsed_content("ema")
    ema = handler.ema_model
    decay = 0.99
    reference = copy.deepcopy(net)  # the rule, applied by hand to the weights after every step
    mismatches: list[tuple[int, int]] = []

    @trainer.on(Events.ITERATION_COMPLETED)  # registered after the trainer's own EMA update
    def _check(e):
        with torch.no_grad():
            for r, p in zip(reference.parameters(), net.parameters()):
                r.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
            for r, b in zip(reference.buffers(), net.buffers()):
                if handler.handle_buffers == "update" and r.is_floating_point():
                    r.mul_(decay).add_(b, alpha=1.0 - decay)
                else:
                    r.copy_(b)
        got, want = ema.state_dict(), reference.state_dict()
        assert list(got) == list(want) == list(net.state_dict())
        mismatches.append((e.state.iteration, sum(not torch.equal(got[k], want[k]) for k in want)))

    wf.run()
    assert mismatches == [(i, 0) for i in (1, 2, 3, 4)]
    k = next(n for n, v in net.state_dict().items() if v.is_floating_point() and "task_prior" not in n)
    assert not torch.equal(ema.state_dict()[k], net.state_dict()[k])

    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert set(state) == {"model", "ema_model"} and list(state["ema_model"]) == list(state["model"])
    fresh = build_network("tiny")
    info = load_release_checkpoint(tmp_path / "models" / "model.pt", fresh)
    assert info["source"] == "ema_model"
    assert torch.equal(fresh.state_dict()[k], state["ema_model"][k])
