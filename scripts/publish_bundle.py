"""Write an exported bundle into the model zoo's release layout, ready to host on any HTTP/file server.

    .venv/bin/python scripts/export_bundle.py mass_fewshot /tmp/export/mass_fewshot --weights model.pt
    .venv/bin/python scripts/publish_bundle.py /tmp/export/mass_fewshot /srv/release --base_url https://host/release

``RELEASE_DIR`` gets

- ``<name>_v<version>.zip``: the bundle under one top folder ``<name>/`` (what ``monai.bundle download``
  extracts), without the files ``large_files.yml`` lists (the weights), whose ``url`` now points at
  ``<base_url>/<name>_v<version>_files/<path>``;
- ``<name>_v<version>_files/<path>``: each large file (``models/model.pt``), SHA-256 as in ``large_files.yml``;
- ``model_info.json``: one entry per published version, ``{"<name>_v<version>": {"checksum": sha256 of the zip,
  "hash_type": "sha256", "source": "<base_url>/<name>_v<version>.zip"}}`` (merged into an existing file).

Users fetch with ``python -m monai.bundle download --name <name> --url <base_url>/<name>_v<version>.zip`` and then
``python -m monai.bundle download_large_files --bundle_path <bundle_dir>/<name>``, which refuses a weight file whose
SHA-256 differs from ``large_files.yml`` (``HashCheckError``, nothing written).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import fire
import yaml


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def publish_bundle(bundle_dir: str, release_dir: str, base_url: str, name: str = "") -> dict[str, str]:
    """Publish ``bundle_dir`` (an export with ``configs/metadata.json``) into ``release_dir``; returns the entry.

    Args:
        bundle_dir: the exported bundle folder (``scripts/export_bundle.py``).
        release_dir: folder to host (created if missing; other releases in it are kept).
        base_url: the URL ``release_dir`` will be served under (no trailing slash needed).
        name: bundle name in file names and in the zip (default: ``bundle_dir``'s folder name).
    """
    src = Path(bundle_dir)
    meta = json.loads((src / "configs" / "metadata.json").read_text())
    name = name or src.name
    tag = f"{name}_v{meta['version']}"
    out = Path(release_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = base_url.rstrip("/")

    large_yml = src / "large_files.yml"
    entries = (yaml.safe_load(large_yml.read_text()) or {}).get("large_files", []) if large_yml.is_file() else []
    large = {e["path"]: e for e in entries}
    files_dir = out / f"{tag}_files"
    for rel, e in large.items():
        f = src / rel
        if not f.is_file():
            raise FileNotFoundError(f"{f}: listed in large_files.yml but missing")
        if e.get("hash_type", "sha256") != "sha256" or _sha256(f) != e["hash_val"]:
            raise ValueError(f"{f}: SHA-256 differs from large_files.yml (re-export the bundle)")
        (files_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, files_dir / rel)
        e["url"] = f"{base}/{tag}_files/{rel}"

    zip_path = out / f"{tag}.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            rel = f.relative_to(src).as_posix()
            if rel in large or "__pycache__" in rel or rel == "large_files.yml" or rel.startswith("eval/"):
                continue
            z.write(f, f"{name}/{rel}")
        if large:
            z.writestr(
                f"{name}/large_files.yml", yaml.safe_dump({"large_files": list(large.values())}, sort_keys=False)
            )

    entry = {"checksum": _sha256(zip_path), "hash_type": "sha256", "source": f"{base}/{tag}.zip"}
    info_path = out / "model_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    info[tag] = entry
    info_path.write_text(json.dumps(info, indent=4, sort_keys=True) + "\n")
    return {"tag": tag, "zip": str(zip_path), **entry}


def main(bundle_dir: str, release_dir: str, base_url: str, name: str = "") -> None:
    """CLI: ``scripts/publish_bundle.py BUNDLE_DIR RELEASE_DIR --base_url URL [--name NAME]``."""
    res = publish_bundle(bundle_dir, release_dir, base_url, name)
    print(f"{res['zip']}  sha256 {res['checksum']}")
    print(f"fetch: python -m monai.bundle download --name {res['tag'].rsplit('_v', 1)[0]} --url {res['source']}")


if __name__ == "__main__":
    fire.Fire(main)
