"""Classes say what they are by their suffix (ARCHITECTURE.md, "Names say what a class is"):
how a stage runs is `...Options`; no other suffix (Settings, Config) names the same thing."""

from __future__ import annotations

import ast
from pathlib import Path

import synthgen

SYNTHGEN = Path(synthgen.__file__).resolve().parent


def test_option_classes_share_one_suffix():
    found = [f"{path.relative_to(SYNTHGEN)}: {node.name}"
             for path in sorted(SYNTHGEN.rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.ClassDef) and node.name.endswith(("Settings", "Config", "Configuration"))]
    assert found == [], "name option classes ...Options"
