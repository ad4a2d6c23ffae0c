"""No import inside a package of synthgen runs in a circle, read from the source (imports
inside functions count too: a circle of lazy imports still ties two modules into one; imports
only for type checkers do not, since they never run).

A circle means two modules that cannot be understood, tested or moved apart; what both need
belongs in a module below both (the model folder names live in world/model_folders.py for this
reason: world/train.py writes the folders, world/evaluate.py reads them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import synthgen

SYNTHGEN = Path(synthgen.__file__).resolve().parent


def module_imports(folder: Path, package: str) -> dict[str, set[str]]:
    """Each module of `package` (dotted name; its files are `folder`/*.py) and the modules of
    the same package it imports anywhere in its source. `from P import N` imports the module
    P.N when that is a file of the package, else P itself."""
    modules = {package + ("" if path.stem == "__init__" else "." + path.stem): path
               for path in folder.glob("*.py")}
    imports = {}
    for name, path in modules.items():
        found = set()
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                             else node.module for alias in node.names)
        imports[name] = {target for target in found if target in modules and target != name}
    return imports


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` except those under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def import_circles(imports: dict[str, set[str]]) -> list[list[str]]:
    """Every circle as the list of modules around it, each found once (depth-first search: a
    circle is an edge back to a module still on the path)."""
    circles, on_path, finished = [], [], set()

    def visit(module: str) -> None:
        on_path.append(module)
        for target in sorted(imports[module]):
            if target in on_path:
                circles.append(on_path[on_path.index(target):] + [target])
            elif target not in finished:
                visit(target)
        on_path.pop()
        finished.add(module)

    for module in sorted(imports):
        if module not in finished:
            visit(module)
    return circles


PACKAGES = sorted({SYNTHGEN, *(init.parent for init in SYNTHGEN.rglob("__init__.py"))})


@pytest.mark.parametrize("folder", PACKAGES, ids=lambda folder: folder.relative_to(SYNTHGEN.parent).as_posix())
def test_no_import_in_a_package_runs_in_a_circle(folder):
    package = ".".join(folder.relative_to(SYNTHGEN.parent).parts)
    imports = module_imports(folder, package)
    assert import_circles(imports) == [], f"import circles in {package}"


def test_the_world_package_is_read_whole():
    imports = module_imports(SYNTHGEN / "world", "synthgen.world")
    assert {"synthgen.world.train", "synthgen.world.evaluate", "synthgen.world.commands"} <= set(imports)
    assert "synthgen.world.model_folders" in imports["synthgen.world.evaluate"]


def test_the_circle_search_finds_lazy_and_indirect_circles(tmp_path):
    # The circle this test was written for: evaluate named the folders from train, and train
    # called evaluate, both inside functions; settings is below both and in no circle.
    (tmp_path / "__init__.py").write_text("from pkg.scene import caption\n")
    (tmp_path / "scene.py").write_text("def caption():\n    pass\n")
    (tmp_path / "settings.py").write_text("from pkg import scene\n")
    (tmp_path / "train.py").write_text("import pkg.settings\n\n\ndef train():\n"
                                       "    from pkg.evaluate import evaluate_world_models\n")
    (tmp_path / "evaluate.py").write_text("from pkg import settings\n\n\ndef evaluate():\n"
                                          "    from pkg.train import CLIP_FOLDER\n")
    imports = module_imports(tmp_path, "pkg")
    assert imports == {"pkg": {"pkg.scene"}, "pkg.scene": set(), "pkg.settings": {"pkg.scene"},
                       "pkg.train": {"pkg.settings", "pkg.evaluate"},
                       "pkg.evaluate": {"pkg.settings", "pkg.train"}}
    assert import_circles(imports) == [["pkg.evaluate", "pkg.train", "pkg.evaluate"]]
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    # An import only for type checkers never runs, so it ties no circle.
    (tmp_path / "scene.py").write_text("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                                       "    from pkg.train import Model\nelse:\n    import pkg.settings\n")
    assert module_imports(tmp_path, "pkg")["pkg.scene"] == {"pkg.settings"}
    assert import_circles({"a": {"b"}, "b": set(), "c": {"b"}}) == []
