"""Pretraining resume keeps the best model: the key-metric tracker travels in the full-state checkpoint."""

from __future__ import annotations

import hashlib
import logging

import pytest
import torch
from ignite.engine import Events

from components.pretrain.checkpoints import latest_checkpoint, resume_checkpoint
from tests._bundles import bundle_workflow
from tests.pretrain._util import masksets_from_labels, tiny_overrides


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _first_epoch(tmp_path, mask_dir) -> None:
    """Epoch 1 of a 2-epoch run, then stop (as a kill after the epoch's checkpoint would)."""
    wf = bundle_workflow(
        "mass_pretrain",
        "train.json",
        "train",
        initialize=True,
        **tiny_overrides(tmp_path, mask_dir, max_epochs=2, iters_per_epoch=1),
    )
    trainer = wf.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda e: e.terminate())
    wf.run()


@pytest.fixture(scope="module")
def mask_dir(tmp_path_factory):
    return masksets_from_labels(tmp_path_factory.mktemp("masks"), max_ids=6)


def test_resume_restores_best_metric_and_never_replaces_a_better_model(tmp_path, mask_dir, one_thread):
    _first_epoch(tmp_path, mask_dir)
    ckpt = latest_checkpoint(tmp_path / "eval" / "checkpoints")
    state = torch.load(ckpt, weights_only=True)
    ((score, name),) = state["best_metric"]["saved"]
    assert name.startswith("checkpoint_key_metric") and 0.0 <= score <= 1.0
    best = tmp_path / "models" / "model.pt"
    before = _sha(best)
    # pretend the epoch-1 model scored higher than any Dice can: a resumed epoch must not beat it
    state["best_metric"]["saved"] = [[2.0, name]]
    torch.save(state, ckpt)
    resumed = bundle_workflow(
        "mass_pretrain",
        "train.json",
        "train",
        initialize=True,
        **tiny_overrides(tmp_path, mask_dir, max_epochs=2, iters_per_epoch=1, resume=True),
    )
    resumed.run()
    assert resumed.parser.get_parsed_content("train#trainer").state.epoch == 2
    assert _sha(best) == before
    new = torch.load(latest_checkpoint(tmp_path / "eval" / "checkpoints"), weights_only=True)
    assert new["trainer"]["iteration"] == 2 and new["best_metric"]["saved"] == [[2.0, name]]


def test_checkpoint_without_best_metric_still_resumes(tmp_path, mask_dir, one_thread):
    _first_epoch(tmp_path, mask_dir)
    ckpt = latest_checkpoint(tmp_path / "eval" / "checkpoints")
    state = torch.load(ckpt, weights_only=True)
    del state["best_metric"]  # as written before the tracker was saved
    torch.save(state, ckpt)
    resumed = bundle_workflow(
        "mass_pretrain",
        "train.json",
        "train",
        initialize=True,
        **tiny_overrides(tmp_path, mask_dir, max_epochs=2, iters_per_epoch=1, resume=True),
    )
    resumed.run()
    assert resumed.parser.get_parsed_content("train#trainer").state.epoch == 2


def test_resume_skips_a_broken_newest_checkpoint_naming_it(tmp_path, mask_dir, one_thread):
    _first_epoch(tmp_path, mask_dir)
    ckpts = tmp_path / "eval" / "checkpoints"
    good = latest_checkpoint(ckpts)
    broken = ckpts / "checkpoint_epoch=2.pt"
    broken.write_bytes(open(good, "rb").read()[:1000])  # a kill in the middle of torch.save
    assert latest_checkpoint(ckpts) == str(broken)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # the bundle's logging.conf replaced the root handlers (caplog's too)
    logging.getLogger("mass.checks").addHandler(handler)
    try:
        assert resume_checkpoint(ckpts) == good
    finally:
        logging.getLogger("mass.checks").removeHandler(handler)
    assert any("checkpoint_epoch=2.pt" in r.getMessage() and "skipping" in r.getMessage() for r in records)
    resumed = bundle_workflow(
        "mass_pretrain",
        "train.json",
        "train",
        initialize=True,
        **tiny_overrides(tmp_path, mask_dir, max_epochs=2, iters_per_epoch=1, resume=True),
    )
    resumed.run()
    assert resumed.parser.get_parsed_content("train#trainer").state.epoch == 2


def test_best_model_is_replaced_atomically_and_never_deleted_first(tmp_path, monkeypatch):
    from monai.handlers import CheckpointSaver

    from components.pretrain.handlers import AtomicFixedSaver, BestMetricState

    net = torch.nn.Linear(2, 2)
    saver = CheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_filename="model.pt")
    BestMetricState(saver)
    handler = saver._key_metric_checkpoint.save_handler
    assert isinstance(handler, AtomicFixedSaver)
    handler({"model": net.state_dict()}, "checkpoint_key_metric=0.1.pt")
    before = _sha(tmp_path / "model.pt")
    handler.remove("checkpoint_key_metric=0.1.pt")  # what Ignite does before saving a better model
    assert _sha(tmp_path / "model.pt") == before

    def killed(obj, f, *a, **k):
        open(f, "wb").write(b"half")
        raise KeyboardInterrupt  # the process dies in the middle of the write

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        handler({"model": net.state_dict()}, "checkpoint_key_metric=0.2.pt")
    assert _sha(tmp_path / "model.pt") == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
