"""Training again over a finished run (issue 24): the same pretraining command twice is refused with
the finished ``models/model.pt`` untouched; ``--resume True`` with a longer ``--max_epochs`` after a
finished run trains on (the one-cycle or poly schedule is rebuilt for the new horizon)."""

from __future__ import annotations

import hashlib

import pytest
import torch

from components.pretrain.checkpoints import latest_checkpoint
from components.pretrain.optim.schedule import build_lr_scheduler
from tests.faults._harness import run_bundle
from tests.faults.test_fault_cases import _pretrain
from tests.pretrain._util import masksets_from_labels


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("schedule", ["onecycle", "poly"])
def test_longer_horizon_after_a_finished_schedule_continues_on_it(schedule):
    def fresh(total):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        return opt, build_lr_scheduler(opt, schedule, total, warmup=0.25)

    opt, done = fresh(3)
    for _ in range(3):
        opt.step()
        done.step()
    opt2, resumed = fresh(6)
    resumed.load_state_dict(done.state_dict())
    opt3, reference = fresh(6)
    for _ in range(3):
        opt3.step()
        reference.step()
    lrs = []
    for _ in range(3):  # "Tried to step 4 times" before; poly went to lr 0 on the old horizon
        opt2.step()
        resumed.step()
        opt3.step()
        reference.step()
        assert resumed.get_last_lr() == pytest.approx(reference.get_last_lr())
        lrs.append(resumed.get_last_lr()[0])
    assert lrs[0] > 0


def test_same_command_twice_is_refused_and_resume_trains_on(tmp_path, capsys, monkeypatch, one_thread):
    fin = tmp_path / "run"
    masks = masksets_from_labels(tmp_path / "masks", max_ids=4)
    argv = _pretrain(tmp_path, fin, mask_dir=masks, overwrite=False, num_val_samples=1)
    first = run_bundle(capsys, monkeypatch, "mass_pretrain", "train.json", *argv)
    assert first.code == 0, first.stderr[-3000:]
    model = fin / "models" / "model.pt"
    before = _sha(model)
    again = run_bundle(capsys, monkeypatch, "mass_pretrain", "train.json", *argv)
    assert again.code == 2 and len(again.errors) == 1, again.stderr[-3000:]
    line = again.errors[0]
    assert f"ckpt_dir: {fin / 'models'}" in line and "--resume True" in line and "--overwrite True" in line
    assert _sha(model) == before
    more = run_bundle(
        capsys, monkeypatch, "mass_pretrain", "train.json", *argv, "--resume", "True", "--max_epochs", "2"
    )
    assert more.code == 0, more.stderr[-3000:]
    state = torch.load(latest_checkpoint(fin / "eval" / "checkpoints"), weights_only=True)
    assert state["trainer"]["iteration"] == 2 and state["lr_scheduler"]["total_steps"] == 2
