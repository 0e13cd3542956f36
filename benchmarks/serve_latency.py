"""Latency of the served MASS segmenter: MONAI Label requests and the MONAI Deploy app, against ``monai.bundle run``.

Baseline, measured in the same run: ``python -m monai.bundle run`` of ``configs/inference.json`` on one demo
volume (a fresh process per image, what a user runs without a server). Then, on the same standalone export
(tiny preset, seeded weights, MNI152 T1 2 mm, 77 x 94 x 80, resampled to 3 mm):

* MONAI Label 0.8.5 (``apps/monailabel``, ``.venv-serve``): server start to ``/info`` 200; ``/infer/mass_fewshot``
  first request (loads the model) and warm requests; ``/infer/mass_incontext`` first request after one label
  is saved (encodes the task embedding) and cached requests; ``/train/mass_fewshot`` 1 epoch on 2 labels.
* MONAI Deploy App SDK 4.0.0 (``apps/deploy``, ``.venv-deploy``): the app's wall time from a NIfTI file and from
  a DICOM series (process start, Holoscan graph, bundle parsing and inference included).

Requires ``bash scripts/setup_serve.sh``. Run on a quiet machine::

    .venv/bin/python benchmarks/serve_latency.py --out eval/serve_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from _machine import cpu_name  # noqa: E402

from tests.serve._live import (  # noqa: E402
    DEMO,
    bundle_run,
    make_bundle_labels,
    make_export,
    make_incontext_checkpoint,
    run_deploy_app,
    save_label,
    start_monailabel,
)

QUERY = DEMO / "mni152_t1.nii.gz"


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def versions(python: Path, modules: list[str]) -> dict[str, str]:
    code = "import importlib.metadata as m, json, sys; print(json.dumps({d: m.version(d) for d in sys.argv[1:]}))"
    return json.loads(
        subprocess.run([str(python), "-c", code, *modules], capture_output=True, text=True, check=True).stdout
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    serve_py, deploy_py = REPO / ".venv-serve/bin/python", REPO / ".venv-deploy/bin/python"
    for p in (serve_py, deploy_py):
        if not p.is_file():
            sys.exit(f"{p} is missing: run `bash scripts/setup_serve.sh` first")
    root = Path(tempfile.mkdtemp(prefix="mass_serve_bench_"))
    bundle = make_export(root)
    ckpt = make_incontext_checkpoint(root / "pretrained.pt")
    labels = make_bundle_labels(root)
    res: dict[str, object] = {
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "versions": {
            "main": versions(Path(sys.executable), ["monai", "torch"]),
            "monailabel_env": versions(serve_py, ["monailabel", "monai", "torch", "numpy", "pydicom"]),
            "deploy_env": versions(
                deploy_py, ["monai-deploy-app-sdk", "holoscan-cu13", "monai", "torch", "pydicom", "highdicom"]
            ),
        },
        "input": f"{QUERY.name} (77 x 94 x 80 at 2 mm; tiny preset, 3 mm, 64^3 window)",
    }
    base = [
        timed(lambda i=i: bundle_run(bundle, "inference.json", QUERY, root / f"base{i}")) for i in range(args.repeats)
    ]
    res["bundle_run_s"] = {"median": statistics.median(base), "all": base}

    t0 = time.perf_counter()
    server = start_monailabel(serve_py, root / "monailabel", bundle, ckpt)
    res["monailabel_start_s"] = time.perf_counter() - t0
    try:

        def infer(model: str) -> None:
            r = requests.post(
                server.url + f"/infer/{model}", params={"image": "mni152_t1", "output": "image"}, timeout=600
            )
            r.raise_for_status()

        first = timed(lambda: infer("mass_fewshot"))
        warm = [timed(lambda: infer("mass_fewshot")) for _ in range(args.repeats)]
        res["monailabel_infer_fewshot_s"] = {"first": first, "warm_median": statistics.median(warm), "warm": warm}
        save_label(server, "colin27_t1", labels["colin27_t1"])
        first = timed(lambda: infer("mass_incontext"))
        cached = [timed(lambda: infer("mass_incontext")) for _ in range(args.repeats)]
        res["monailabel_infer_incontext_s"] = {
            "first_encodes_task": first,
            "cached_median": statistics.median(cached),
            "cached": cached,
        }
        save_label(server, "itk_t1", labels["itk_t1"])

        def train() -> None:
            r = requests.post(
                server.url + "/train/mass_fewshot",
                params={"run_sync": "true"},
                json={"max_epochs": 1, "device": "cpu", "multi_gpu": False},
                timeout=1800,
            )
            r.raise_for_status()

        res["monailabel_train_1_epoch_2_labels_s"] = timed(train)
    finally:
        server.stop()

    series = root / "dicom" / "mni152_dicom"
    subprocess.run([str(deploy_py), str(REPO / "apps/deploy/nifti_to_dicom.py"), str(QUERY), str(series)], check=True)
    nifti = [
        timed(lambda i=i: run_deploy_app(deploy_py, bundle, QUERY, root / f"deploy{i}")) for i in range(args.repeats)
    ]
    res["deploy_app_nifti_s"] = {"median": statistics.median(nifti), "all": nifti}
    res["deploy_app_dicom_s"] = timed(lambda: run_deploy_app(deploy_py, bundle, series, root / "deploy_dicom"))
    b = statistics.median(base)
    res["ratios_vs_bundle_run"] = {
        "monailabel_fewshot_warm": res["monailabel_infer_fewshot_s"]["warm_median"] / b,  # type: ignore[index]
        "monailabel_incontext_cached": res["monailabel_infer_incontext_s"]["cached_median"] / b,  # type: ignore[index]
        "deploy_app_nifti": statistics.median(nifti) / b,
    }
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
