"""The code each DVC stage runs, read from its imports, against the deps dvc.yaml lists.

DVC reruns a stage when one of its deps changed, so a module a stage runs but does not list
is a change that silently reuses stale outputs. This module computes, for every stage of
``pipeline.stages.STAGES``, the project files it executes: its module
``pipeline/stages/<name>.py`` and, transitively, every project module it imports (imports
inside functions too, as they run when the stage does), plus the ``__init__.py`` of every
package on the way that holds code (docstring-only ones run nothing). It then compares that
with the ``pipeline/`` entries of the stage's ``deps`` in dvc.yaml (data and outputs deps
are left alone).

    python -m pipeline.ops.stage_deps           # list the differences; exit 1 if any
    python -m pipeline.ops.stage_deps --write   # rewrite dvc.yaml's code deps to match

tests/test_stage_deps.py runs the check, so a stale dvc.yaml fails the suite.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Iterable
from pathlib import Path

import yaml

PACKAGE = "pipeline"


def module_file(root: Path, module: str) -> Path | None:
    """The file of a project module (``pkg/mod.py`` or ``pkg/mod/__init__.py``), or None."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    """Every module name an AST imports, anywhere in it (relative imports resolved)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            yield base
            # `from pkg import mod` imports the module pkg.mod
            yield from (f"{base}.{alias.name}" for alias in node.names)


def has_code(path: Path) -> bool:
    """Whether a file holds anything besides a docstring."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return bool(body)


def code_deps(root: Path, module: str) -> set[str]:
    """Project files (posix, relative to ``root``) that importing ``module`` can execute."""
    files: set[str] = set()
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen or not (name == PACKAGE or name.startswith(PACKAGE + ".")):
            continue
        seen.add(name)
        path = module_file(root, name)
        if path is None:
            continue  # a name imported from a module, not a module itself
        parent = name.rpartition(".")[0]
        if parent:
            pending.append(parent)  # importing a.b.c runs a/__init__.py and a/b/__init__.py
        if path.name != "__init__.py" or has_code(path):
            files.add(path.relative_to(root).as_posix())
        tree = ast.parse(path.read_text(encoding="utf-8"))
        pending += _imported(tree, name, path.name == "__init__.py")
    return files


def listed_code_deps(dvc: dict, stage: str) -> set[str]:
    """The ``pipeline/`` entries of a stage's deps in a parsed dvc.yaml."""
    deps = dvc["stages"][stage].get("deps", [])
    return {dep for dep in deps if dep.startswith(PACKAGE + "/")}


def expected(root: Path, stages: Iterable[str]) -> dict[str, set[str]]:
    """Each stage's code deps, computed from the imports of ``pipeline.stages.<stage>``."""
    return {stage: code_deps(root, f"{PACKAGE}.stages.{stage}") for stage in stages}


def differences(root: Path, dvc_file: Path, stages: Iterable[str]) -> list[str]:
    """One line per stage whose dvc.yaml code deps differ from what it runs (none: in sync)."""
    dvc = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
    problems = []
    for stage, runs in expected(root, stages).items():
        if stage not in dvc.get("stages", {}):
            problems.append(f"{stage}: no such stage in {dvc_file}")
            continue
        listed = listed_code_deps(dvc, stage)
        if missing := sorted(runs - listed):
            problems.append(f"{stage}: runs but does not list {', '.join(missing)}")
        if extra := sorted(listed - runs):
            problems.append(f"{stage}: lists but does not run {', '.join(extra)}")
    return problems


def rewrite(root: Path, dvc_file: Path, stages: Iterable[str]) -> bool:
    """Replace each stage's ``pipeline/`` deps in dvc.yaml with the computed ones, sorted,
    after its other deps; comments and everything else stay. True when the file changed."""
    lines = dvc_file.read_text(encoding="utf-8").splitlines(keepends=True)
    wanted = expected(root, stages)
    stage_header = re.compile(r"^  (\w[\w-]*):\s*$")
    out: list[str] = []
    stage = None
    in_deps = False
    for line in [*lines, ""]:
        if in_deps and not re.match(r"^      (- |#)", line):
            if stage in wanted:  # the end of the deps list: the computed code deps go here
                out += [f"      - {path}\n" for path in sorted(wanted[stage])]
            in_deps = False
        if match := stage_header.match(line):
            stage = match.group(1)
        elif re.match(r"^    deps:\s*$", line):
            in_deps = True
        elif in_deps and re.match(rf"^      - {PACKAGE}/", line):
            continue
        out.append(line)
    text = "".join(out)
    changed = text != dvc_file.read_text(encoding="utf-8")
    dvc_file.write_text(text, encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    """Check dvc.yaml's code deps (exit 1 on a difference) or rewrite them (``--write``)."""
    from pipeline.stages import NAMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml to match")
    parser.add_argument("--root", type=Path, default=Path())
    args = parser.parse_args(argv)
    dvc_file = args.root / "dvc.yaml"
    if args.write and rewrite(args.root, dvc_file, NAMES):
        print(f"rewrote the code deps in {dvc_file}")
    problems = differences(args.root, dvc_file, NAMES)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
