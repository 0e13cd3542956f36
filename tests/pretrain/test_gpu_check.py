"""benchmarks/gpu_pretrain_check.py runs end to end on CPU with tiny settings and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests._bundles import REPO


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_gpu_pretrain_check_runs_on_cpu_with_tiny_settings(tmp_path):
    out = tmp_path / "check.json"
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "gpu_pretrain_check.py"), "--out", str(out),
        "--work_dir", str(tmp_path / "work"), "--data_dir", str(REPO / "data" / "demo"), "--preset", "tiny",
        "--crop", "32", "--spacing", "4", "--batch_size", "1", "--max_masks", "3", "--iters_per_epoch", "3",
        "--max_epochs", "2", "--minutes", "10", "--ladder_crop", "32", "--ladder_spacing", "4",
        "--ladder_batch", "1", "--ladder_iters", "4", "--ladder_eval_every", "2",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [p["iteration"] for p in result["curve"]] == [0, 3, 6]  # untrained, then after every epoch
    assert all(0.0 <= p["dice_demo5"] <= 1.0 for p in result["curve"])
    assert result["data_samples_per_s"] > 0 and result["step_samples_per_s"] > 0
    assert result["precision"] == "fp32" and result["device"].startswith("CPU")
    for rung in ("R1", "R2"):  # the ladder's rungs ran first, each scored after every 2 iterations
        assert [r["iteration"] for r in result["ladder"][rung]["curve"]] == [2, 4], result["ladder"][rung]
        assert result["ladder"][rung]["settings"]["preset"] == "tiny"
