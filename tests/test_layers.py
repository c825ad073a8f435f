"""Imports point one way: models and datasources at the bottom, scoring on
datasources, study on those, analysis on top; inside study, its rooms in
the order studies -> (request, plan, errors, internals) -> tracking -> trial
-> runner. Read from the source, so a new import in the wrong direction
fails here. Also: no directory of code outgrows a quarter of the code, and
no function in study/ takes more than 6 positional parameters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

LOWER = {"models", "datasources", "scoring"}
# what each unit may import of ours (besides itself); study's rooms are units
ALLOWED = {
    "models": set(),
    "datasources": set(),
    "scoring": {"datasources"},
    "study.studies": LOWER | {"datasources"},
    "study.base": LOWER | {"study.studies"},  # request, plan, errors, internals
    "study.tracking": LOWER | {"study.studies", "study.base"},
    "study.trial": LOWER | {"study.studies", "study.base", "study.tracking"},
    "study.runner": LOWER | {"study.studies", "study.base", "study.tracking", "study.trial"},
    # analysis reads what studies wrote through study.tracking's documented
    # interface and the study definitions, never the runner or the trial
    "analysis": LOWER | {"study.studies", "study.tracking"},
}
ROOMS = ("studies", "tracking", "trial", "runner")
ENTRY = ("run", "__init__")  # study/run.py and study/__init__.py start the runner


def unit(parts: tuple[str, ...] | list[str]) -> str | None:
    """The unit of a module given as its dotted parts (or a path's parts)."""
    top = parts[0] if parts else ""
    if top not in {"models", "datasources", "scoring", "study", "analysis"}:
        return None
    if top != "study":
        return top
    rest = [p.removesuffix(".py") for p in parts[1:]]
    if rest and rest[0] in ROOMS:
        return f"study.{rest[0]}"
    return "study.runner" if not rest or rest[0] in ENTRY else "study.base"


def _our_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            # `from study import X` (the package's lazy exports) is the runner's entry
            modules = [node.module] if len(parts) > 1 or parts[0] != "study" else ["study.run"]
        else:
            continue
        names |= {u for m in modules if (u := unit(m.split("."))) is not None}
    return names


def _files(top: str) -> list[Path]:
    return sorted((ROOT / top).rglob("*.py"))


@pytest.mark.parametrize("top", ["models", "datasources", "scoring", "study", "analysis"])
def test_a_unit_imports_only_the_layers_below_it(top):
    wrong = {}
    for path in _files(top):
        here = unit(path.relative_to(ROOT).parts)
        bad = sorted(_our_imports(path) - ALLOWED[here] - {here})
        if bad:
            wrong[str(path.relative_to(ROOT))] = bad
    assert not wrong


def test_every_room_of_study_is_a_unit_with_rules():
    rooms = {p.name for p in (ROOT / "study").iterdir() if (p / "__init__.py").exists()}
    assert rooms == set(ROOMS)
    assert {f"study.{r}" for r in ROOMS} <= set(ALLOWED)


def test_no_module_outside_a_package_imports_its_private_names():
    offenders = []
    for folder in ("benchmarks", "analysis", "study", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module:
                    top = node.module.split(".")[0]
                    if top in {"models", "datasources", "scoring", "study", "analysis"} and (
                        top != folder
                    ):
                        offenders += [
                            f"{path.name}: {node.module}.{a.name}"
                            for a in node.names
                            if a.name.startswith("_")
                        ]
    assert offenders == []


SKIP = {"tests", "build", "docs", "node_modules", "__pycache__"}


def code_lines_by_folder() -> dict[str, int]:
    """Lines of Python in each folder of the checkout (its own files, not
    its sub-folders'), tests and build output left out."""
    out: dict[str, int] = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if any(p in SKIP or p.startswith(".") or p.endswith(".egg-info") for p in rel.parts):
            continue
        folder = str(rel.parent)
        out[folder] = out.get(folder, 0) + len(path.read_text().splitlines())
    return out


def test_no_folder_holds_more_than_a_quarter_of_the_code():
    lines = code_lines_by_folder()
    total = sum(lines.values())
    assert total > 5000  # the walk found the code
    big = {k: round(v / total, 3) for k, v in lines.items() if v > total / 4}
    assert not big, f"split these folders by job: {big}"


def _positional(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    return len([n for n in names if n not in ("self", "cls")])


def test_no_function_or_constructor_in_study_takes_more_than_six_positional_parameters():
    wide = []
    for path in _files("study"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _positional(node) > 6:
                wide.append(f"{path.name}: {node.name}")
            if isinstance(node, ast.ClassDef) and _dataclass_fields(node) > 6:
                wide.append(f"{path.name}: {node.name} (a dataclass; make it kw_only)")
    assert wide == []


def _dataclass_fields(cls: ast.ClassDef) -> int:
    """Positional constructor parameters of a dataclass: its fields, or under
    kw_only=True those that say kw_only=False."""
    for deco in cls.decorator_list:
        call = deco if isinstance(deco, ast.Call) else None
        target = call.func if call else deco
        if not (isinstance(target, ast.Name) and target.id == "dataclass"):
            continue
        kw_only = call is not None and any(
            k.arg == "kw_only" and getattr(k.value, "value", False) for k in call.keywords
        )
        fields = [s for s in cls.body if isinstance(s, ast.AnnAssign) and _is_init_field(s)]
        if kw_only:
            return sum("kw_only=False" in ast.unparse(s.value) for s in fields if s.value)
        return len(fields)
    return 0


def _is_init_field(stmt: ast.AnnAssign) -> bool:
    """A field the generated __init__ takes (not ClassVar, not init=False)."""
    if "ClassVar" in ast.unparse(stmt.annotation):
        return False
    value = stmt.value
    return not (
        isinstance(value, ast.Call)
        and any(
            k.arg == "init" and getattr(k.value, "value", True) is False for k in value.keywords
        )
    )


# columns the analysis makes itself that share a name with some family's
# setting: the budget curve's k (configurations tried), not the dVAE's k
OWN_COLUMNS = {"k"}


def test_no_figure_or_report_names_a_familys_setting():
    """Plots and the report ask a family which setting plays a role
    (`role(...)`); a setting's own name in their code would tie them to one
    family."""
    from models import FAMILIES
    from models.config import keys

    settings = set().union(*(keys(f.Config) for f in FAMILIES.values()))
    named = []
    for path in (ROOT / "analysis").glob("*.py"):
        tree = ast.parse(path.read_text())
        roles = {  # a role's name is no setting's name
            id(a)
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "role"
            for a in node.args
        }
        named += [
            f"{path.name}:{node.lineno} {node.value}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and node.value in settings - OWN_COLUMNS
            and id(node) not in roles
        ]
    assert named == []
