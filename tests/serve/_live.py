"""Helpers of the live-server tests: a free port, a server process with a bounded start, multipart replies."""

from __future__ import annotations

import email
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import requests
import torch

from tests._bundles import REPO

DEMO = REPO / "data" / "demo"
CLASS_NAMES: list[str] = json.loads((REPO / "bundles/mass_fewshot/configs/inference.json").read_text())["class_names"]


def make_export(root: Path) -> Path:
    """Standalone mass_fewshot export under ``root`` with seeded fixed-class weights, model.pt and model.ts."""
    from components.network.nets import FixedClassNet
    from tests._scripts import load_script

    export = load_script("export_bundle")
    torch.manual_seed(3)
    ckpt = root / "ft.pt"
    torch.save({"model": FixedClassNet("tiny", num_classes=len(CLASS_NAMES)).state_dict()}, ckpt)
    out = root / "mass_fewshot"
    export.export_bundle("mass_fewshot", str(out), weights=str(ckpt), torchscript=True, overwrite=True)
    return out


def make_incontext_checkpoint(path: Path) -> Path:
    """A mass_pretrain-style container whose plain and EMA weights differ (the EMA ones must be served)."""
    from components.network.nets import build_network

    torch.manual_seed(11)
    plain = build_network("tiny").state_dict()
    torch.manual_seed(12)
    ema = build_network("tiny").state_dict()
    torch.save({"model": plain, "ema_model": ema}, path)
    return path


def make_bundle_labels(out: Path) -> dict[str, Path]:
    """Demo label maps in the bundle's numbering (1..N for the demo classes, from the FreeSurfer ids)."""
    classes = json.loads((REPO / "bundles/mass_fewshot/configs/demo.json").read_text())["classes"]
    result = {}
    for case in ("colin27", "itk", "mni152"):
        seg = nib.load(DEMO / f"{case}_seg.nii.gz")
        ids = np.asarray(seg.dataobj)
        lab = np.zeros(ids.shape, np.uint8)
        for value, name in enumerate(CLASS_NAMES, start=1):
            lab[np.isin(ids, classes[name])] = value
        path = out / f"{case}_t1.nii.gz"
        nib.save(nib.Nifti1Image(lab, seg.affine), str(path))
        result[f"{case}_t1"] = path
    return result


def start_monailabel(
    serve_python: Path, root: Path, bundle: Path, incontext_checkpoint: Path, conf: dict[str, str] | None = None
) -> Server:
    """MONAI Label (apps/monailabel, a copy under ``root``) on a free port, demo volumes as studies; waits for /info."""
    conf = {"bundle": str(bundle), "incontext_checkpoint": str(incontext_checkpoint), **(conf or {})}
    return start_app(serve_python, root, REPO / "apps" / "monailabel", conf)


def start_app(
    serve_python: Path, root: Path, app_src: Path, conf: dict[str, str], models: Path | None = None
) -> Server:
    """The MONAI Label app ``app_src`` (copied to ``root/app``; ``models``: bundle folders copied into its
    ``model/``, as the stock bundle app finds them offline) with the demo volumes as studies; waits for /info."""
    import shutil

    studies = root / "studies"
    studies.mkdir(parents=True)
    for case in ("mni152_t1", "colin27_t1", "itk_t1"):
        shutil.copy(DEMO / f"{case}.nii.gz", studies / f"{case}.nii.gz")
    app = root / "app"
    shutil.copytree(app_src, app, ignore=shutil.ignore_patterns("__pycache__", "logs", "model"))
    for bundle in [models] if models else []:
        shutil.copytree(bundle, app / "model" / bundle.name)
    port = free_port()
    cmd = [str(serve_python.parent / "monailabel"), "start_server", "--app", str(app), "--studies", str(studies)]
    for key, value in conf.items():
        cmd += ["--conf", key, value]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    # the monailabel launcher runs `python -m monailabel.main`: the environment's python must come first on PATH
    env = {**os.environ, "PATH": f"{serve_python.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    srv = Server(cmd, port, root / "server.log", env=env)
    try:
        srv.wait("/info/", timeout=300)
    except Exception:
        srv.stop()
        raise
    return srv


def save_label(server: Server, image: str, label: Path) -> None:
    with open(label, "rb") as f:
        r = requests.put(
            server.url + "/datastore/label",
            params={"image": image, "tag": "final"},
            files={"label": (label.name, f)},
            timeout=60,
        )
    r.raise_for_status()


def bundle_run(bundle: Path, config: str, source: Path, out: Path, **overrides: str) -> Path:
    """``python -m monai.bundle run`` of ``configs/<config>`` on one input (file or DICOM folder); the output file."""
    import sys

    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"configs/{config}"]
    cmd += ["--dataset_dir", str(source.parent), "--image_pattern", source.name, "--output_dir", str(out)]
    for k, v in overrides.items():
        cmd += [f"--{k}", v]
    subprocess.run(cmd + ["--logging_file", "configs/logging.conf"], cwd=bundle, check=True, capture_output=True)
    return next(out.glob("*.nii.gz"))


def run_deploy_app(deploy_python: Path, bundle: Path, source: Path, out: Path) -> None:
    """``apps/deploy/app.py -i source -o out -m bundle`` in the Deploy environment; raises with its output on failure."""
    cmd = [
        str(deploy_python),
        str(REPO / "apps" / "deploy" / "app.py"),
        "-i",
        str(source),
        "-o",
        str(out),
        "-m",
        str(bundle),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"deploy app failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server process (own process group) answering on ``http://127.0.0.1:<port>``; its log in ``log``."""

    def __init__(self, cmd: Sequence[str], port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(cmd), stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def wait(self, path: str, timeout: float) -> requests.Response:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                r = requests.get(self.url + path, timeout=5)
                if r.status_code == 200:
                    return r
            except requests.ConnectionError:
                pass
            time.sleep(1.0)
        raise TimeoutError(f"no 200 from {path} within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, n: int = 60) -> str:
        self._log.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self._log.close()


def multipart(response: requests.Response) -> dict[str, Any]:
    """MONAI Label's multipart infer reply -> ``{"params": dict, "image": (filename, bytes)}``."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    msg = email.message_from_bytes(head + response.content)
    out: dict[str, Any] = {}
    for part in msg.get_payload():
        name = part.get_param("name", header="content-disposition")
        body = part.get_payload(decode=True)
        out[name] = json.loads(body) if name == "params" else (part.get_filename(), body)
    return out
