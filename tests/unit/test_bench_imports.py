"""`make bench` is not part of `make test`, so a rename in keel can break it unseen (it did: the peers
imported a helper that had moved). Every name the benchmarks import from keel must exist."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _keel_imports() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted((ROOT / "bench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "keel":
                found += [(str(path.relative_to(ROOT)), node.module, a.name) for a in node.names]
    return found


def test_every_name_the_benchmarks_import_from_keel_exists() -> None:
    imports = _keel_imports()
    assert len(imports) > 10  # the walk found the benchmarks' imports at all
    missing = []
    for where, module, name in imports:
        mod = importlib.import_module(module)
        if not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{where}: from {module} import {name}")
    assert not missing, missing
