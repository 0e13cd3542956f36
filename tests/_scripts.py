"""Import a repository script (``scripts/<name>.py``) as a module in tests."""

from __future__ import annotations

import importlib
from types import ModuleType


def load_script(name: str) -> ModuleType:
    """``load_script("export_bundle")`` -> ``scripts.export_bundle`` (``scripts`` is installed with the project)."""
    return importlib.import_module(f"scripts.{name}")
