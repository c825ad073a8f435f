"""Imports point one way: models and datasources at the bottom, scoring on
datasources, study on those, analysis on top. Read from the source, so a new
import in the wrong direction fails here."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import ROOT

# what each package may import of ours (besides itself)
ALLOWED = {
    "models": set(),
    "datasources": set(),
    "scoring": {"datasources"},
    "study": {"models", "datasources", "scoring"},
    "analysis": {"models", "datasources", "scoring", "study"},
}


def _our_imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(ALLOWED)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
    wrong = {
        str(path.relative_to(ROOT)): sorted(_our_imports(path) - ALLOWED[package] - {package})
        for path in (ROOT / package).rglob("*.py")
    }
    assert not {k: v for k, v in wrong.items() if v}


def test_no_module_outside_a_package_imports_its_private_names():
    offenders = []
    for folder in ("benchmarks", "analysis", "study", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    top = node.module.split(".")[0]
                    if top in ALLOWED and top != folder:
                        offenders += [
                            f"{path.name}: {node.module}.{a.name}"
                            for a in node.names
                            if a.name.startswith("_")
                        ]
    assert offenders == []
