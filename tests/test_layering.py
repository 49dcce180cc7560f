"""The import arrows run one way: wsss_app -> python_models -> wsss_ext.
Checked on the installed packages' source, so an import hidden inside a
function counts too."""

import ast
import importlib
from pathlib import Path

import pytest

# package -> packages it must never import
FORBIDDEN = {"wsss_ext": {"python_models", "wsss_app"}, "python_models": {"wsss_app"}}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_layer_imports_a_layer_above_it(package):
    root = Path(importlib.import_module(package).__file__).parent
    files = sorted(root.rglob("*.py"))
    assert files
    offenders = {str(f.relative_to(root)): sorted(_imported_packages(f) & FORBIDDEN[package]) for f in files}
    assert {name: found for name, found in offenders.items() if found} == {}
