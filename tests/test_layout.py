"""The package's rooms and what each may import, as the folder tree shows them.

    core < data < model, evaluation < integrations < stages < ops < cli

A room imports only the rooms before it (and itself); MLflow is imported only in
``pipeline/integrations/`` and Prefect only in the top-level ``flows/``, which wraps the
stages from the outside. No module is longer than ``MAX_LINES``, no stage module longer than
``MAX_STAGE_LINES`` (a stage reads load, compute, write, log; the compute lives in the library
rooms), and no function body longer than ``MAX_FUNCTION_LINES`` unless its docstring says why
("Long because ...").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from helpers_env import ROOT

PACKAGE = ROOT / "pipeline"
MAX_LINES = 600
MAX_STAGE_LINES = 300
MAX_FUNCTION_LINES = 50  # the body; a typer command's signature is its options

LIBRARY = {"core", "data", "model", "evaluation"}
MAY_IMPORT: dict[str, set[str]] = {
    "core": {"core"},
    "data": {"core", "data"},
    "model": {"core", "data", "model"},
    "evaluation": {"core", "data", "evaluation"},
    "integrations": LIBRARY | {"integrations"},
    "stages": LIBRARY | {"integrations", "stages"},
    "ops": LIBRARY | {"integrations", "stages", "ops"},
    "cli": LIBRARY | {"integrations", "stages", "ops"},
}
# The one import between stages: register re-scores the champion with evaluate's scoring.
STAGE_TO_STAGE = {("register", "evaluate")}


def modules(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*.py") if "__pycache__" not in path.parts)


def room_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def imported(path: Path) -> set[str]:
    """Every module name ``path`` imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def project_rooms(names: set[str]) -> set[str]:
    """The rooms of ``pipeline`` that import names point into."""
    return {name.split(".")[1] for name in names if name.startswith("pipeline.")} - {""}


@pytest.mark.parametrize("path", modules(PACKAGE), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_imports_only_the_rooms_below_its_own(path):
    room = room_of(path)
    if room in {"__init__", "__main__"}:
        return
    assert room in MAY_IMPORT, f"{path}: not in a room ({', '.join(MAY_IMPORT)})"
    rooms = project_rooms(imported(path))
    assert rooms <= MAY_IMPORT[room], f"{room} may not import {rooms - MAY_IMPORT[room]}"
    if room == "stages" and path.stem != "__init__":
        others = {
            name.split(".")[2]
            for name in imported(path)
            if name.startswith("pipeline.stages.") and len(name.split(".")) > 2
        }
        others = {(path.stem, other) for other in others if other != path.stem}
        assert others <= STAGE_TO_STAGE, f"a stage imports another stage: {others}"


def test_only_the_integrations_room_imports_mlflow_and_only_flows_import_prefect():
    for path in modules(PACKAGE) + modules(ROOT / "flows"):
        tools = {name.split(".")[0] for name in imported(path)} & {"mlflow", "prefect"}
        where = path.relative_to(ROOT).parts
        if where[0] == "flows":
            assert tools <= {"prefect"}, f"{path} imports {tools}"
        elif where[1] == "integrations":
            assert tools <= {"mlflow"}, f"{path} imports {tools}"
        else:
            assert not tools, f"{path} imports {tools}: go through pipeline/integrations"


def test_every_room_says_what_it_holds_and_no_module_is_too_long():
    for room in MAY_IMPORT:
        if room != "cli":
            init = PACKAGE / room / "__init__.py"
            assert ast.get_docstring(ast.parse(init.read_text())), init
    too_long = {
        str(path.relative_to(ROOT)): lines
        for path in modules(PACKAGE) + modules(ROOT / "flows")
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not too_long, too_long
    fat_stages = {
        path.name: lines
        for path in modules(PACKAGE / "stages")
        if (lines := len(path.read_text().splitlines())) > MAX_STAGE_LINES
    }
    assert not fat_stages, fat_stages


def long_functions(path: Path) -> list[str]:
    """Functions of ``path`` whose body passes MAX_FUNCTION_LINES with no reason given."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        lines = node.end_lineno - node.body[0].lineno + 1
        if lines > MAX_FUNCTION_LINES and "Long because" not in (ast.get_docstring(node) or ""):
            found.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_long_without_a_reason():
    paths = modules(PACKAGE) + modules(ROOT / "flows")
    assert [problem for path in paths for problem in long_functions(path)] == []


def test_a_long_function_without_a_reason_is_found(tmp_path):
    body = "".join(f"    x = {n}\n" for n in range(MAX_FUNCTION_LINES))
    path = tmp_path / "long.py"
    path.write_text(
        f'def bare():\n    """Doc."""\n{body}\n\n'
        f'def reasoned():\n    """Doc.\n\n    Long because it must be.\n    """\n{body}'
    )
    assert long_functions(path) == [f"long.py:1 bare ({MAX_FUNCTION_LINES + 1} lines)"]


def test_tests_take_their_helpers_from_helper_modules():
    """A test module imports no other test module: helpers that several test modules
    share live in tests/helpers_*.py."""
    tests = sorted((ROOT / "tests").glob("test_*.py"))
    borrowed = [
        f"{path.name} imports {name}"
        for path in tests
        for name in imported(path)
        if name.split(".")[0].startswith("test_")
    ]
    assert tests and borrowed == []
