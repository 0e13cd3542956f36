"""scripts/export_bundle.py: each bundle exported alone runs with nothing beside it.

Every run is ``python -m monai.bundle run`` in a subprocess whose working directory is the exported
bundle (the documented way to run a stage), without ``PYTHONPATH``: the export's own ``components/``
must be what is imported (an installed ``components`` is only reached for a module the export lacks).
A test override appends a ``run`` step that records the file of every loaded ``components`` module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests._bundles import REPO
from tests._scripts import load_script
from tests.pretrain._util import masksets_from_labels, tiny_overrides

BUNDLES = ("mass_maskgen", "mass_pretrain", "mass_fewshot", "mass_probe")
NOT_NEEDED = {  # subpackages an export must not carry
    "mass_maskgen": ("network", "pretrain", "fewshot", "probe", "inference"),
    "mass_pretrain": ("maskgen", "fewshot", "probe"),
    "mass_fewshot": ("maskgen", "probe"),
    "mass_probe": ("maskgen", "pretrain", "fewshot", "inference"),
}


def _exporter():
    return load_script("export_bundle")


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    exporter = _exporter()
    return {b: Path(exporter.export_bundle(b, str(root / b))["bundle"]) for b in BUNDLES}


def _run(bundle: Path, configs: list[str], overrides: dict, tmp: Path) -> list[Path]:
    """``monai.bundle run`` of ``configs`` in ``bundle``; returns the files of the loaded components modules."""
    where = tmp / "loaded_modules.txt"
    record = {
        "+run": [
            "$__import__('pathlib').Path(" + repr(str(where)) + ").write_text('\\n'.join(sorted(m.__file__ for n, m in "
            "list(__import__('sys').modules.items()) if n.split('.')[0] == 'components' and "
            "getattr(m, '__file__', None))))"
        ],
    }
    extra = tmp / "record.json"
    extra.write_text(json.dumps(record))
    args = []
    for k, v in overrides.items():
        args += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps([*configs, str(extra)])]
    cmd += ["--logging_file", "configs/logging.conf", *args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "2"
    res = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    files = [Path(p) for p in where.read_text().splitlines()]
    assert files, "no components module was loaded"
    outside = [p for p in files if not p.resolve().is_relative_to(bundle.resolve())]
    assert not outside, f"imported from outside the export: {outside}"
    return files


def test_exports_hold_only_the_modules_they_need(exports) -> None:
    for name, bundle in exports.items():
        assert (bundle / "configs" / "metadata.json").is_file() and (bundle / "LICENSE").is_file()
        assert (bundle / "docs" / "README.md").is_file()
        assert not list((bundle / "configs").glob("demo*.json")), "the repository's demo overrides stay behind"
        assert (bundle / "components" / "__init__.py").is_file()
        for sub in NOT_NEEDED[name]:
            assert not (bundle / "components" / sub).exists(), f"{name} export carries components/{sub}"
        for d in (p for p in (bundle / "components").rglob("*") if p.is_dir() and p.name != "__pycache__"):
            assert (d / "__init__.py").is_file(), d  # every package folder is importable
    assert (exports["mass_maskgen"] / "components" / "maskgen" / "sam2" / "model.py").is_file()
    assert (exports["mass_probe"] / "components" / "probe" / "head.py").is_file()
    assert not (exports["mass_probe"] / "components" / "probe" / "proxy.py").exists()  # demo-only helper


def test_weights_get_large_files_entries(tmp_path) -> None:
    src = tmp_path / "bundles" / "mass_probe"
    import shutil

    shutil.copytree(REPO / "bundles" / "mass_probe", src, ignore=shutil.ignore_patterns("eval", "models"))
    (src / "models").mkdir()
    (src / "models" / "model.pt").write_bytes(b"weights")
    res = _exporter().export_bundle("mass_probe", str(tmp_path / "out"), bundles_dir=str(tmp_path / "bundles"))
    text = (tmp_path / "out" / "large_files.yml").read_text()
    assert res["large_files"] and (tmp_path / "out" / "models" / "model.pt").is_file()
    assert 'path: "models/model.pt"' in text and 'hash_type: "sha256"' in text
    assert f'hash_val: "{hashlib.sha256(b"weights").hexdigest()}"' in text
    assert text.startswith("# url:")  # no host known: said so


def test_exported_maskgen_runs_slic_on_a_demo_volume(exports, demo_data, tmp_path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "colin27_t1.nii.gz").symlink_to(demo_data / "colin27_t1.nii.gz")
    out = tmp_path / "masks"
    small = {"slic_n_segments": [8, 30], "min_voxels": 20, "reference_spacing": [6.0, 6.0, 6.0]}
    files = _run(
        exports["mass_maskgen"],
        ["configs/inference.json"],
        {"dataset_dir": str(data), "output_dir": str(out), "modality": "MR", **small},
        tmp_path,
    )
    assert any(p.name == "workflow.py" and p.parent.name == "maskgen" for p in files)
    from components.io.maskset import MaskSet

    ms = MaskSet.open(out / "colin27_t1.mset")
    assert len(ms) >= 5 and ms.provenance[0]["source"] == "slic"


@pytest.mark.slow
def test_exported_pretrain_runs_two_iterations(exports, tmp_path) -> None:
    masks = masksets_from_labels(tmp_path / "masks", max_ids=8)
    ov = tiny_overrides(tmp_path / "run", masks, iters_per_epoch=2, max_epochs=1)
    ov.pop("bundle_root")
    _run(exports["mass_pretrain"], ["configs/train.json"], ov, tmp_path)
    assert (tmp_path / "run" / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_exported_fewshot_and_probe_inference(exports, demo_data, tmp_path) -> None:
    from components.network.nets import FixedClassNet
    from components.probe.features import build_encoder
    from components.probe.head import ProbeClassifier

    torch.manual_seed(0)
    bundle = exports["mass_fewshot"]
    names = json.loads((bundle / "configs" / "inference.json").read_text())["class_names"]
    ckpt = tmp_path / "fewshot.pt"
    torch.save(FixedClassNet("tiny", num_classes=len(names)).state_dict(), ckpt)
    out = tmp_path / "seg"
    ov = {
        "dataset_dir": str(demo_data),
        "image_pattern": "itk_t1.nii.gz",
        "ckpt_path": str(ckpt),
        "output_dir": str(out),
    }
    _run(bundle, ["configs/inference.json"], ov, tmp_path)
    seg = nib.load(out / "itk_t1_seg.nii.gz")
    assert seg.shape == nib.load(demo_data / "itk_t1.nii.gz").shape
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= set(range(len(names) + 1))

    bundle = exports["mass_probe"]
    classes = json.loads((bundle / "configs" / "inference.json").read_text())["classes"]
    ckpt = tmp_path / "probe.pt"
    net = ProbeClassifier(build_encoder("tiny"), num_classes=len(classes), task="multiclass", freeze_encoder=True)
    torch.save(net.state_dict(), ckpt)
    out = tmp_path / "probe"
    ov = {
        "dataset_dir": str(demo_data),
        "image_pattern": "mni152_t1.nii.gz",
        "preset": "tiny",
        "spacing": [4.0, 4.0, 4.0],
        "spatial_size": [32, 32, 32],
        "ckpt_path": str(ckpt),
        "output_dir": str(out),
    }
    _run(bundle, ["configs/inference.json"], ov, tmp_path)
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 and len(rows[0].split(",")) == 1 + len(classes)


def test_demo_weights_of_another_preset_export_under_their_own_preset(tmp_path):
    """The demo pretrains the ``tiny`` preset while the bundle's configs say ``small``: the export writes the
    preset the weights need into its configs, so its network_def loads them strictly; weights of another
    network are refused naming the file."""
    from monai.bundle import ConfigParser

    from components.network.nets import FixedClassNet, build_network

    tiny = build_network("tiny").state_dict()
    ckpt = tmp_path / "demo_model.pt"
    torch.save({"model": tiny, "ema_model": tiny}, ckpt)  # the pretraining bundle's container, as the demo writes
    out = Path(_exporter().export_bundle("mass_pretrain", str(tmp_path / "b"), weights=str(ckpt))["bundle"])
    for name in ("inference.json", "train.json"):
        assert json.loads((out / "configs" / name).read_text())["preset"] == "tiny", name
    assert (out / "configs" / "inference.json").read_text().count("\n") == (
        REPO / "bundles" / "mass_pretrain" / "configs" / "inference.json"
    ).read_text().count("\n")  # only the value changed, not the file's layout
    parser = ConfigParser()
    parser.read_config(str(out / "configs" / "inference.json"))
    parser["bundle_root"] = str(out)
    parser.get_parsed_content("network_def").load_state_dict(torch.load(out / "models" / "model.pt", weights_only=True))

    other = tmp_path / "fixed_class.pt"
    torch.save(FixedClassNet("tiny", num_classes=3).state_dict(), other)
    with pytest.raises(ValueError, match="fixed_class.pt: weights do not load into the exported network_def"):
        _exporter().export_bundle("mass_pretrain", str(tmp_path / "c"), weights=str(other))


def test_zoo_pr_layout_exclusions_and_description(tmp_path):
    """``--zoo_pr``: the four bundles under ``models/``, styled for the zoo (JSON at indent 4 with ASCII escapes, no
    executable bits), no weights and no ``large_files.yml`` without a url, the exclusions each bundle needs with their
    reasons, the zoo's list file with them added, and a pull-request text in the zoo's template without eval_metrics."""
    import ast as ast_

    zoo = tmp_path / "zoo"
    (zoo / "ci").mkdir(parents=True)
    (zoo / "ci" / "bundle_custom_data.py").write_text(
        'exclude_verify_shape_list = ["a"]\n\nexclude_verify_preferred_files_list = ["b", "c"]\n\n'
        'exclude_verify_torchscript_list = [\n    "d",\n    "e",\n]\n\nexclude_download_large_file_list = ["x"]\n'
    )
    res = _exporter().write_zoo_pr(str(tmp_path / "pr"), zoo_repo=str(zoo))
    pr = tmp_path / "pr"
    assert sorted(p.name for p in (pr / "models").iterdir()) == sorted(BUNDLES)
    for name in BUNDLES:
        b = pr / "models" / name
        assert not (b / "models").exists() and not (b / "large_files.yml").exists()
        for f in b.rglob("*"):
            assert f.stat().st_mode & 0o111 == (0o111 if f.is_dir() else 0), f
        for cfg in (b / "configs").glob("*.json"):
            text = cfg.read_text()
            assert text == json.dumps(json.loads(text), indent=4) + "\n", cfg  # pre-commit pretty-format-json
    ex = res["exclusions"]
    assert set(ex["exclude_verify_shape_list"]) == {"mass_maskgen", "mass_pretrain"}
    assert "3 inputs" in ex["exclude_verify_shape_list"]["mass_pretrain"]
    assert set(ex["exclude_verify_preferred_files_list"]) == set(BUNDLES)  # no weights published
    assert json.loads((pr / "ci_exclusions.json").read_text()) == ex
    lists = {
        n.targets[0].id: ast_.literal_eval(n.value)
        for n in ast_.parse((pr / "ci" / "bundle_custom_data.py").read_text()).body
        if isinstance(n, ast_.Assign)
    }
    assert lists["exclude_verify_shape_list"] == ["a", "mass_maskgen", "mass_pretrain"]
    assert lists["exclude_verify_preferred_files_list"] == ["b", "c", *BUNDLES]
    assert lists["exclude_verify_torchscript_list"][:2] == ["d", "e"] and lists["exclude_download_large_file_list"] == [
        "x"
    ]
    text = (pr / "PULL_REQUEST.md").read_text()
    for heading in ("### Description", "### Status", "### Please ensure all the checkboxes:"):
        assert heading in text
    assert "No `eval_metrics`" in text and "Work in progress" in text


def test_zoo_pr_weights_go_to_the_upload_folder_with_real_urls(tmp_path):
    from tests.zoo._exports import random_weights

    random_weights("mass_probe", tmp_path / "probe.pt")
    res = _exporter().write_zoo_pr(
        str(tmp_path / "pr"),
        weights={"mass_probe": str(tmp_path / "probe.pt")},
        weights_url="https://host/mass/",
        eval_metrics={"mass_probe": {"accuracy": 0.75}},
    )
    pr = tmp_path / "pr"
    assert res["hosted"] == ["mass_probe"]
    up = pr / "weights" / "mass_probe" / "model.pt"
    large = (pr / "models" / "mass_probe" / "large_files.yml").read_text()
    assert 'url: "https://host/mass/mass_probe/model.pt"' in large and 'path: "models/model.pt"' in large
    assert f'hash_val: "{hashlib.sha256(up.read_bytes()).hexdigest()}"' in large
    assert "mass_probe" not in res["exclusions"].get("exclude_verify_preferred_files_list", {})
    meta = json.loads((pr / "models" / "mass_probe" / "configs" / "metadata.json").read_text())
    assert meta["eval_metrics"] == {"accuracy": 0.75}
    assert "accuracy = 0.75" in (pr / "PULL_REQUEST.md").read_text()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eval_metrics": {"mass_probe": {"accuracy": 1.0}}}, "mass_probe'] have no --weights"),
        ({"weights": {"mass_maskgen": "x.pt"}}, "mass_maskgen has no network weights of its own"),
        ({"weights": {"mass_other": "x.pt"}}, "unknown bundle"),
    ],
)
def test_zoo_pr_refuses_what_the_zoo_would_get_wrong(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _exporter().write_zoo_pr(str(tmp_path / "pr"), **kwargs)
