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

The params a stage reads are checked the same way (``missing_params``): in every function of
the code it runs that takes a ``Params`` argument, each ``params.<section>.<key>`` (also
through a local ``x = params.<section>``) must be listed in the stage's ``params`` in
dvc.yaml, as the key or its section; a section passed on whole needs the whole section.
Functions of another stage's module count only where this stage calls them by name.
``params.model_dump`` (the lineage hash of every param, an MLflow tag) is not a read.
These are added to dvc.yaml by hand: ``--write`` rewrites only the code deps.

tests/test_stage_deps.py runs both checks, so a stale dvc.yaml fails the suite.
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


def _section_names() -> dict[str, tuple[str, set[str]]]:
    """Params attribute -> (its params.yaml name, the keys of its section)."""
    from pipeline.core.config import Params

    sections = {}
    for attribute, field in Params.model_fields.items():
        keys = set(getattr(field.annotation, "model_fields", {}))
        sections[attribute] = (field.alias or attribute, keys)
    return sections


def _takes_params(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """The names of a function's arguments annotated ``Params``."""
    arguments = [*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs]
    return {
        argument.arg
        for argument in arguments
        if argument.annotation is not None and ast.unparse(argument.annotation) == "Params"
    }


def _section_aliases(function: ast.AST, roots: set[str]) -> dict[str, str]:
    """Local names bound to a section: ``x = params.train`` (also in tuple assignments)."""
    aliases = {}
    for node in ast.walk(function):
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target, value = node.targets[0], node.value
        pairs = [(target, value)]
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
            pairs = list(zip(target.elts, value.elts, strict=False))
        for name, bound in pairs:
            if (
                isinstance(name, ast.Name)
                and isinstance(bound, ast.Attribute)
                and isinstance(bound.value, ast.Name)
                and bound.value.id in roots
            ):
                aliases[name.id] = bound.attr
    return aliases


def function_params_reads(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """The params read in a function that takes ``Params``: "section" or "section.key"
    (attribute names, e.g. ``validate_``); empty when it takes none."""
    roots = _takes_params(function)
    if not roots:
        return set()
    aliases = _section_aliases(function, roots)
    parent_of = {child: node for node in ast.walk(function) for child in ast.iter_child_nodes(node)}
    reads = set()
    for node in ast.walk(function):
        section = None
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in roots
        ):
            section = node.attr
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in aliases:
            section = aliases[node.id]
        if section is None or section == "model_dump":
            continue
        parent = parent_of.get(node)
        if isinstance(parent, ast.Attribute) and parent.value is node:
            reads.add(f"{section}.{parent.attr}")
        elif not (isinstance(parent, ast.Assign) and parent.value is node):
            reads.add(section)  # passed on whole
    return reads


def _functions(tree: ast.AST) -> Iterable[ast.FunctionDef | ast.AsyncFunctionDef]:
    return (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))


def _called_in(tree: ast.AST, module_name: str) -> set[str]:
    """The functions of ``module_name`` that a module calls as ``module_name.f(...)``."""
    return {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == module_name
    }


def params_read(root: Path, stage: str, stages: Iterable[str]) -> set[str]:
    """The params a stage reads, as params.yaml names ("data.root", "train")."""
    own = f"{PACKAGE}/stages/{stage}.py"
    own_tree = ast.parse((root / own).read_text(encoding="utf-8"))
    other_stages = {f"{PACKAGE}/stages/{name}.py": name for name in stages if name != stage}
    reads: set[str] = set()
    for path in code_deps(root, f"{PACKAGE}.stages.{stage}"):
        tree = ast.parse((root / path).read_text(encoding="utf-8"))
        functions = list(_functions(tree))
        if path in other_stages:  # only what this stage calls of it
            called = _called_in(own_tree, other_stages[path])
            functions = [f for f in functions if f.name in called]
        for function in functions:
            reads |= function_params_reads(function)
    sections = _section_names()
    named = set()
    for read in reads:
        attribute, _, key = read.partition(".")
        if attribute not in sections:
            continue  # a method of Params, not a section
        section, keys = sections[attribute]
        # A property or method of a section reads fields of its own: count the section.
        named.add(f"{section}.{key}" if key in keys else section)
    return named


def missing_params(root: Path, dvc_file: Path, stages: Iterable[str]) -> list[str]:
    """One line per stage that reads params its dvc.yaml ``params`` do not list."""
    stages = list(stages)
    dvc = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
    problems = []
    for stage in stages:
        listed = {
            entry if isinstance(entry, str) else key
            for entry in dvc["stages"].get(stage, {}).get("params", [])
            for key in (entry if isinstance(entry, dict) else [entry])
        }
        reads = params_read(root, stage, stages)
        missing = sorted(
            read for read in reads if read not in listed and read.partition(".")[0] not in listed
        )
        if missing:
            problems.append(f"{stage}: reads but does not list params {', '.join(missing)}")
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
    """Check dvc.yaml's code and params deps (exit 1 on a difference); ``--write`` rewrites
    the code deps."""
    from pipeline.stages import NAMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml to match")
    parser.add_argument("--root", type=Path, default=Path())
    args = parser.parse_args(argv)
    dvc_file = args.root / "dvc.yaml"
    if args.write and rewrite(args.root, dvc_file, NAMES):
        print(f"rewrote the code deps in {dvc_file}")
    problems = differences(args.root, dvc_file, NAMES)
    problems += missing_params(args.root, dvc_file, NAMES)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
