"""What validate finds per annotation row: the checks, the findings, the clean and bad rows.

Each row either passes every check of ``CHECKS`` and goes to its split's clean file, or goes
to the quarantine file with every failing check named. Tabular checks are Great
Expectations suites (``expectations``), image checks plain Python (``imagecheck``); the
stage (pipeline/stages/validate.py) runs them, writes the files and logs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.config import Params, ValidateParams, resolve_classes
from pipeline.core.errors import UserError
from pipeline.data.contract import (
    ANNOTATION_COLUMNS,
    BOX_COLUMNS,
    SPLITS,
    image_path,
    safe_image_path,
)
from pipeline.data.quality import expectations
from pipeline.data.quality.imagecheck import (
    IMAGE_CHECKS,
    ImageFacts,
    image_problems,
    inspect_images,
)

# Every check that quarantines a row, in report order: name -> what a failure means.
CHECKS: dict[str, str] = {
    "missing_value": "a required cell is empty",
    "not_a_number": "a box coordinate is text, NaN or infinite",
    "out_of_range": "a box coordinate is outside [0, 1]",
    "inverted_box": "x_min >= x_max or y_min >= y_max",
    "box_too_small": "box width or height below validate.min_box_size",
    "unsafe_path": "image_id/folder contain a path separator, NUL or are '.'/'..', "
    "or the file resolves outside the data root (symlink)",
    **IMAGE_CHECKS,
    "unknown_class": "class_name is not in the class list",
    "unknown_folder": "folder is not in the class list",
}
# Reported, quarantine nothing.
WARNINGS: dict[str, str] = {
    "repeated_row": "rows with the same image, class and box (every copy counted; "
    "dedup keeps the first)",
    "column_order": "splits whose CSV header is not in the contract order (read by name)",
}
QUARANTINE_LEAD = ["split", "row"]
QUARANTINE_TAIL = ["reasons", "detail"]


class Findings:
    """Failing checks per row: (split, row) -> {check: [details]}, plus warnings."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], dict[str, list[str]]] = {}
        self.warnings: Counter[str] = Counter()

    def add(self, split: str, row: int, check: str, detail: str) -> None:
        """Record that ``row`` of ``split`` fails ``check``, and why."""
        self.rows.setdefault((split, row), {}).setdefault(check, []).append(detail)

    def add_gx(self, failures: list[expectations.Failure]) -> None:
        """Record Great Expectations' failures: row failures, or warnings to count."""
        for failure in failures:
            if failure.warn:
                self.warnings[failure.check] += 1
            else:
                self.add(failure.split, failure.row, failure.check, failure.detail)

    def has(self, split: str, row: int, check: str) -> bool:
        """Whether ``row`` of ``split`` already fails ``check``."""
        return check in self.rows.get((split, row), {})

    def bad_rows(self, split: str) -> list[int]:
        """The failing rows of ``split``, ascending."""
        return sorted(row for (where, row) in self.rows if where == split)

    def reasons(self, split: str, row: int) -> list[str]:
        """The checks ``row`` fails, in ``CHECKS`` order."""
        found = self.rows.get((split, row), {})
        return [check for check in CHECKS if check in found]

    def detail(self, split: str, row: int) -> str:
        """Every failing check of ``row`` with its details, for the quarantine file."""
        found = self.rows[(split, row)]
        checks = self.reasons(split, row)
        return "; ".join(f"{check}: {', '.join(found[check])}" for check in checks)

    def per_check(self) -> dict[str, int]:
        """Failing rows per check, every check listed."""
        counts = Counter(check for found in self.rows.values() for check in found)
        return {check: counts.get(check, 0) for check in CHECKS}


@dataclass
class Located:
    """Where the rows of a split point."""

    paths: dict[int, Path] = field(default_factory=dict)  # row -> image path inside the root
    targets: set[Path] = field(default_factory=set)  # every path a row names (referenced files)
    escaping: list[int] = field(default_factory=list)  # rows whose image leaves the data root


def locate_images(root: Path, split: str, table: pd.DataFrame) -> Located:
    """Each row's image path, confined to the data root (each distinct name resolved once)."""
    located = Located()
    resolved: dict[tuple[str, str], tuple[Path, Path | None]] = {}
    named = table.dropna(subset=["folder", "image_id"])
    for row, folder, image_id in named[["row", "folder", "image_id"]].itertuples(index=False):
        if (folder, image_id) not in resolved:
            resolved[folder, image_id] = (
                image_path(root, split, folder, image_id),
                safe_image_path(root, split, folder, image_id),
            )
        target, path = resolved[folder, image_id]
        located.targets.add(target)
        if path is None:
            located.escaping.append(int(row))
        else:
            located.paths[int(row)] = path
    return located


def check_images(
    located: dict[str, Located], limits: ValidateParams, findings: Findings, progress: bool
) -> dict[Path, ImageFacts]:
    """Inspect every referenced image once; record each row's image failures."""
    for split, where in located.items():
        for row in where.escaping:  # a bad name is GX's finding already; a symlink is not
            if not findings.has(split, row, "unsafe_path"):
                findings.add(split, row, "unsafe_path", "the file resolves outside the data root")
    paths = sorted({path for where in located.values() for path in where.paths.values()})
    facts = inspect_images(paths, limits.max_image_pixels, progress)
    problems = {path: image_problems(image, limits) for path, image in facts.items()}
    for split, where in located.items():
        for row, path in where.paths.items():
            for check, detail in problems[path]:
                findings.add(split, row, check, detail)
    return facts


def resolve_class_list(params: Params, train: pd.DataFrame, bad_rows: list[int]) -> list[str]:
    """The class list; for "auto", the class names of train rows that passed every other check."""
    names = train.loc[~train["row"].isin(bad_rows), "class_name"].dropna().tolist()
    try:
        return resolve_classes(params.data, names)
    except UserError as exc:
        raise UserError(
            f"{exc.message} (no train row passed validation)",
            hint="see the quarantine file, or set data.classes explicitly",
        ) from None


def clean_frame(table: pd.DataFrame, bad_rows: list[int]) -> pd.DataFrame:
    """Clean rows: contract columns (boxes as parsed floats) plus the original row number."""
    good = table[~table["row"].isin(bad_rows)]
    frame = good[ANNOTATION_COLUMNS].copy()
    for column in BOX_COLUMNS:
        frame[column] = good[expectations.value_column(column)].astype("float64")
    frame["row"] = good["row"].astype("int64")
    return frame.reset_index(drop=True)


def quarantine_frame(
    raw: dict[str, pd.DataFrame], findings: Findings, columns: list[str]
) -> pd.DataFrame:
    """Bad rows with every original column as text, the failing check names and details."""
    parts = []
    for split in SPLITS:
        rows = findings.bad_rows(split)
        if not rows:
            continue
        part = raw[split].iloc[rows].reindex(columns=columns, fill_value="")
        part.insert(0, "split", split)
        part.insert(1, "row", rows)
        part["reasons"] = [";".join(findings.reasons(split, row)) for row in rows]
        part["detail"] = [findings.detail(split, row) for row in rows]
        parts.append(part)
    header = [*QUARANTINE_LEAD, *columns, *QUARANTINE_TAIL]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=header)


def original_columns(frames: dict[str, pd.DataFrame]) -> list[str]:
    """Contract columns first, then any extra columns of any split (renamed on a clash)."""
    columns = list(ANNOTATION_COLUMNS)
    for frame in frames.values():
        columns += [str(col) for col in frame.columns if str(col) not in columns]
    return columns


def rename_clashes(frame: pd.DataFrame) -> pd.DataFrame:
    """Extra columns named like the quarantine's own get an ``original_`` prefix."""
    reserved = set(QUARANTINE_LEAD + QUARANTINE_TAIL)
    return frame.rename(
        columns={col: f"original_{col}" for col in frame.columns if col in reserved}
    )


def header_out_of_order(frame: pd.DataFrame) -> bool:
    """True when the contract columns are not in the contract order (extras ignored)."""
    return [col for col in frame.columns if col in ANNOTATION_COLUMNS] != ANNOTATION_COLUMNS


def build_report(
    tables: dict[str, pd.DataFrame],
    findings: Findings,
    facts: dict[Path, ImageFacts],
    classes: list[str] | None,
    unreferenced: list[str],
    runner: expectations.SuiteRunner,
    params: Params,
) -> dict[str, Any]:
    """Numbers at the top level (DVC metrics); only lists under "details" (DVC skips lists).

    Long because it is one literal: the report's whole layout reads in one place.
    """
    total = sum(len(table) for table in tables.values())
    bad = len(findings.rows)
    notes: Counter[str] = Counter()
    noted: dict[str, list[str]] = {}
    for path, image in sorted(facts.items()):
        if image.notes():
            notes.update(image.notes())
            noted[path.relative_to(params.data.root).as_posix()] = image.notes()
    per_split = {}
    for split, table in tables.items():
        quarantined = len(findings.bad_rows(split))
        per_split[split] = {
            "rows": len(table),
            "clean": len(table) - quarantined,
            "quarantined": quarantined,
        }
    outcomes = [ok for summary in runner.summaries for ok in summary.success.values()]
    return {
        "rows_total": total,
        "rows_clean": total - bad,
        "rows_quarantined": bad,
        "bad_fraction": round(bad / total, 6) if total else 0.0,
        "max_bad_fraction": params.validate_.max_bad_fraction,
        "classes": len(classes) if classes is not None else 0,
        "images_checked": len(facts),
        "unreferenced_images": len(unreferenced),
        "per_check": findings.per_check(),
        "per_split": per_split,
        "notes": dict(sorted(notes.items())),
        "warnings": {name: findings.warnings.get(name, 0) for name in WARNINGS},
        "expectations": {"evaluated": len(outcomes), "failed": outcomes.count(False)},
        "details": {
            "classes": classes,
            "unreferenced_images": unreferenced,
            "noted_images": noted,
            "per_check_split": per_check_split(findings),
            "checks": [{"check": name, "meaning": text} for name, text in CHECKS.items()],
            "warnings": [{"warning": name, "meaning": text} for name, text in WARNINGS.items()],
            "expectations": [
                {
                    "suite": summary.suite,
                    "expectation": summary.expectation,
                    "columns": summary.columns,
                    "check": summary.check,
                    "unexpected": summary.unexpected,
                }
                for summary in runner.summaries
            ],
        },
    }


def per_check_split(findings: Findings) -> list[dict[str, Any]]:
    """Rows failing each check, per split (a list: DVC shows only the top-level numbers)."""
    counts = {check: dict.fromkeys(SPLITS, 0) for check in CHECKS}
    for (split, _), found in findings.rows.items():
        for check in found:
            counts[check][split] += 1
    return [{"check": check, **per_split} for check, per_split in counts.items()]
