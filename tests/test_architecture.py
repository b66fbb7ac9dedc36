"""The method's core (merge, prune, taylor, controller) imports only the standard library, torch, numpy and each other."""

import ast
import sys
from pathlib import Path

import pytest

import grasp_lora

PACKAGE = Path(grasp_lora.__file__).parent
CORE = ("merge", "prune", "taylor", "controller")


def runtime_imports(path: Path) -> set[str]:
    """Modules imported when `path` runs (imports under `if TYPE_CHECKING:` are for type hints only)."""
    found: set[str] = set()

    def visit(node):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `from . import prune`, `from .merge import x`
                found.update(f".{node.module}" if node.module else f".{a.name}" for a in node.names)
            else:
                found.add(node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


@pytest.mark.parametrize("name", CORE)
def test_core_imports_only_stdlib_torch_numpy_and_itself(name):
    allowed_roots = set(sys.stdlib_module_names) | {"torch", "numpy", "__future__"}
    outside = {m for m in runtime_imports(PACKAGE / f"{name}.py")
               if not (m.lstrip(".") in CORE if m.startswith(".") else m.split(".")[0] in allowed_roots)}
    assert not outside, f"{name}.py imports {sorted(outside)}"


def test_the_check_sees_an_outward_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("from .config import SearchConfig\nif TYPE_CHECKING:\n    from .train import x\n")
    assert runtime_imports(bad) == {".config"}
