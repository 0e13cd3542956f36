"""A whole volume segmented in context, from the command line: the release's ``inference.py`` against our bundle.

Both sides get the same reference image + label map, the same query volume and the same weights (a random
initialisation of the release's ``Iris`` at ``--preset``, saved in the release's checkpoint container with
its ``config``, which both read) and run as a user runs them, each in its own process:

* ``release``: ``python inference.py --checkpoint ... --test-image Q --reference-image R --reference-mask L
  --reference-label ids --window-size w w w --target-spacing s s s --modality mr`` from the clone given as
  ``--release_dir`` (its defaults otherwise: body crop of the query, one reference crop per label,
  all labels in one forward, largest component per label).
* ``ours``: ``python -m monai.bundle run`` of ``mass_pretrain/configs/inference.json`` with the same
  settings (``--labels``, ``--roi_size``, ``--spacing``; the reference cropped once around the labels,
  ``ReferenceInferer`` sliding windows with Gaussian blending, largest component per label).

The time is the wall time of the whole command (imports, reading, preprocessing, inference, writing), the
median of ``--reps`` runs, so it is what a user waits per volume; the label maps are compared (Dice of each
label between the two outputs) to show both did the same task. With random weights the maps are arbitrary:
the agreement is reported, not required. Default volumes: the demo brains (query MNI152, reference
Colin27 and its SAMSEG labels).

    python benchmarks/volume_vs_release.py --release_dir /path/to/MASS --extra_path /tmp/release_pkgs \\
        --out benchmarks/results/volume_vs_release_cpu.json

``--extra_path``: a folder with the release's extra imports (``pip install --target DIR einops SimpleITK tqdm
pyyaml``).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import fire
import nibabel as nib
import numpy as np
from vs_release import PRESET_SHAPES, _items, _machine, write_result

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"


def _weights(release_dir: str, extra_path: str, preset: str, window: int, path: Path) -> None:
    """The release's random ``Iris`` at ``preset`` in its checkpoint container (``model`` + ``config``)."""
    code = (
        "import sys, torch; sys.path[:0] = sys.argv[1:3]\n"
        "from models.iris import Iris\n"
        "torch.manual_seed(0)\n"
        f"cfg = {{'model': {{'type': 'iris', 'in_ch': 1, 'channels': {list(PRESET_SHAPES[preset])}, "
        f"'num_block': [2, 2, 2, 2], 'tn': 73}}, 'evaluation': {{'window_size': [{window}] * 3, 'overlap': 0.5}}}}\n"
        "m = dict(cfg['model']); m.pop('type')\n"
        "torch.save({'model': Iris(**m).state_dict(), 'config': cfg}, sys.argv[3])\n"
    )
    subprocess.run([sys.executable, "-c", code, release_dir, extra_path, str(path)], check=True)


def _timed_run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return seconds


def main(
    release_dir: str,
    extra_path: str = "",
    query: str = str(DEMO / "mni152_t1.nii.gz"),
    ref_image: str = str(DEMO / "colin27_t1.nii.gz"),
    ref_label: str = str(DEMO / "colin27_seg.nii.gz"),
    labels: str = "4,43,10,49,16",
    preset: str = "small",
    window: int = 96,
    spacing: float = 1.5,
    reps: int = 2,
    threads: int = 2,
    out: str = "",
) -> dict[str, Any]:
    """Time both commands on one volume; print the line and write ``out`` (JSON) if given."""
    if not (Path(release_dir) / "inference.py").is_file():
        raise SystemExit(f"{release_dir}: not a clone of Stanford-AIMI/MASS (no inference.py)")
    ids = [str(int(v)) for v in _items(labels)]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0"),
    }
    with tempfile.TemporaryDirectory() as work:
        w = Path(work)
        ckpt = w / "weights.pt"
        _weights(release_dir, extra_path, preset, window, ckpt)
        release_out, our_out = w / "release_seg.nii.gz", w / "ours"
        release_cmd = [sys.executable, "inference.py", "--checkpoint", str(ckpt), "--test-image", query]
        release_cmd += ["--reference-image", ref_image, "--reference-mask", ref_label, "--reference-label", *ids]
        release_cmd += ["--window-size", *[str(window)] * 3, "--target-spacing", *[str(spacing)] * 3]
        release_cmd += ["--modality", "mr", "--output", str(release_out)]
        release_env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (release_dir, extra_path) if p)}
        our_cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
        our_cmd += ["--query_image", query, "--ref_image", ref_image, "--ref_label", ref_label]
        our_cmd += ["--labels", f"[{','.join(ids)}]", "--preset", preset, "--checkpoint", str(ckpt)]
        our_cmd += ["--roi_size", f"[{window},{window},{window}]", "--spacing", f"[{spacing},{spacing},{spacing}]"]
        our_cmd += ["--modality", "mr", "--output_dir", str(our_out)]
        our_env = {**env, "PYTHONPATH": str(REPO)}
        times: dict[str, list[float]] = {"release": [], "ours": []}
        for _ in range(reps):  # alternating, so a change in machine load hits both sides alike
            times["release"].append(_timed_run(release_cmd, Path(release_dir), release_env))
            times["ours"].append(_timed_run(our_cmd, REPO / "bundles" / "mass_pretrain", our_env))
        a = np.asarray(nib.load(str(release_out)).dataobj)
        (ours_file,) = our_out.glob("*_seg.nii.gz")
        b = np.asarray(nib.load(str(ours_file)).dataobj)
    if a.shape != b.shape:
        raise SystemExit(f"label maps of different shapes: release {a.shape}, ours {b.shape}")
    dice = {}
    for i in ids:
        x, y = a == int(i), b == int(i)
        total = int(x.sum() + y.sum())
        dice[i] = round(2 * int((x & y).sum()) / total, 4) if total else None
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {
        "preset": preset,
        "window": window,
        "spacing_mm": spacing,
        "labels": ids,
        "query": query,
        "query_shape": list(a.shape),
        "seconds": times,
        "median_s": med,
        "ratio_release_over_ours": round(med["release"] / med["ours"], 3),
        "dice_release_vs_ours": dice,
    }
    print(
        f"{preset} {window}^3 at {spacing} mm, {len(ids)} labels, query {a.shape}: release {med['release']:.1f} s, "
        f"ours {med['ours']:.1f} s (x{row['ratio_release_over_ours']}); Dice between the outputs {dice}",
        flush=True,
    )
    machine = _machine()
    machine["threads"] = threads
    result = {"machine": machine, "rows": [row]}
    return write_result(out, result)


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda _: None)
