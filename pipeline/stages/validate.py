"""Stage "validate": check every annotation row and every image it points at.

Each row of ``annotations-<split>.csv`` either passes every check and goes to the split's
clean file, or goes to the quarantine file with every failing check named — nothing is
dropped or altered silently (``rows in == clean + quarantined`` is asserted per split).

Where each check lives (``CHECKS`` lists them all, in report order):

- tabular checks are Great Expectations suites (``pipeline.data.quality.expectations``), run
  on one batch per split; GX returns the failing row numbers, which become quarantine reasons;
- image checks are plain Python (``pipeline.data.quality.imagecheck``): each referenced file
  is inspected once, on both cores, with a progress bar;
- the class checks run last, because ``data.classes: auto`` takes the class list from the
  train rows that passed everything else.

Image facts the loader handles (PNG named .jpg, grayscale/CMYK/palette/alpha, EXIF rotation)
are ``notes``, not errors. Boxes refer to the image as displayed, i.e. after its EXIF
orientation is applied (every reader in ``pipeline.data.contract`` applies it): rotated images are
kept and the contact sheets draw them that way, so a wrong box shows. Repeated rows and a
header in a non-contract order are ``warnings``: reported, nothing quarantined (dedup removes
the repeats; columns are read by name).

Outputs (``outputs/validate/``): clean CSVs, ``quarantine.csv``, ``classes.json``,
``report.json`` (DVC metrics: numbers at the top level, lists under "details"), GX Data Docs
(``data_docs/index.html``) and contact sheets (``contact_sheets/*.png``). The stage fails
(UserError) when the quarantined share passes ``validate.max_bad_fraction`` — after writing
every output, so the user can inspect them.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.config import Params, ValidateParams, resolve_classes
from pipeline.core.errors import UserError
from pipeline.core.files import write_csv, write_json
from pipeline.core.paths import Outputs
from pipeline.data.contract import (
    ANNOTATION_COLUMNS,
    BOX_COLUMNS,
    SPLITS,
    annotations_path,
    image_path,
    read_raw_annotations,
    safe_image_path,
)
from pipeline.data.quality import contact_sheet, diagnose, expectations
from pipeline.data.quality.imagecheck import (
    IMAGE_CHECKS,
    ImageFacts,
    image_problems,
    inspect_images,
    unreferenced_images,
)

log = logging.getLogger(__name__)

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
SHEET_IMAGES = 16  # images per contact sheet
SHEET_NOTED = 4  # of which, at most, images with notes (EXIF-rotated, CMYK...) shown first
SHEET_SEED = 0


def docs_dir(outputs: Outputs) -> Path:
    """The GX Data Docs site (a DVC out of the validate stage)."""
    return outputs.validate_dir / "data_docs"


def sheets_dir(outputs: Outputs) -> Path:
    """The contact sheet PNGs (a DVC out of the validate stage)."""
    return outputs.validate_dir / "contact_sheets"


# --------------------------------------------------------------------------------------
# Findings: what failed, per row
# --------------------------------------------------------------------------------------


class Findings:
    """Failing checks per row: (split, row) -> {check: [details]}, plus warnings."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, int], dict[str, list[str]]] = {}
        self.warnings: Counter[str] = Counter()

    def add(self, split: str, row: int, check: str, detail: str) -> None:
        self.rows.setdefault((split, row), {}).setdefault(check, []).append(detail)

    def add_gx(self, failures: list[expectations.Failure]) -> None:
        for failure in failures:
            if failure.warn:
                self.warnings[failure.check] += 1
            else:
                self.add(failure.split, failure.row, failure.check, failure.detail)

    def has(self, split: str, row: int, check: str) -> bool:
        return check in self.rows.get((split, row), {})

    def bad_rows(self, split: str) -> list[int]:
        return sorted(row for (where, row) in self.rows if where == split)

    def reasons(self, split: str, row: int) -> list[str]:
        found = self.rows.get((split, row), {})
        return [check for check in CHECKS if check in found]

    def detail(self, split: str, row: int) -> str:
        found = self.rows[(split, row)]
        checks = self.reasons(split, row)
        return "; ".join(f"{check}: {', '.join(found[check])}" for check in checks)

    def per_check(self) -> dict[str, int]:
        counts = Counter(check for found in self.rows.values() for check in found)
        return {check: counts.get(check, 0) for check in CHECKS}


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Classes and outputs
# --------------------------------------------------------------------------------------


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


def _original_columns(frames: dict[str, pd.DataFrame]) -> list[str]:
    """Contract columns first, then any extra columns of any split (renamed on a clash)."""
    columns = list(ANNOTATION_COLUMNS)
    for frame in frames.values():
        columns += [str(col) for col in frame.columns if str(col) not in columns]
    return columns


def _rename_clashes(frame: pd.DataFrame) -> pd.DataFrame:
    reserved = set(QUARANTINE_LEAD + QUARANTINE_TAIL)
    return frame.rename(
        columns={col: f"original_{col}" for col in frame.columns if col in reserved}
    )


def header_out_of_order(frame: pd.DataFrame) -> bool:
    """True when the contract columns are not in the contract order (extras ignored)."""
    return [col for col in frame.columns if col in ANNOTATION_COLUMNS] != ANNOTATION_COLUMNS


# --------------------------------------------------------------------------------------
# Contact sheets
# --------------------------------------------------------------------------------------


def _boxes(rows: pd.DataFrame) -> list[tuple[contact_sheet.Box, str]]:
    """Drawable boxes (all four coordinates parsed) with their class names."""
    values = rows[[expectations.value_column(c) for c in BOX_COLUMNS]]
    usable = values.notna().all(axis=1) & np.isfinite(values.fillna(0)).all(axis=1)
    labels = rows["class_name"].fillna("?")
    return [
        (tuple(box), str(label))
        for box, label in zip(values[usable].to_numpy(), labels[usable], strict=True)
    ]


def _one_per_note(paths: list[Path], facts: dict[Path, ImageFacts]) -> list[Path]:
    """The first image with each kind of note (EXIF rotation, CMYK...)."""
    first: dict[str, Path] = {}
    for path in paths:
        for note in facts[path].notes():
            first.setdefault(note, path)
    return list(dict.fromkeys(first.values()))


def split_tiles(
    table: pd.DataFrame, bad_rows: list[int], located: Located, facts: dict[Path, ImageFacts]
) -> list[contact_sheet.Tile]:
    """Clean images of a split: those with notes (EXIF-rotated...) first, then random ones."""
    good = table[~table["row"].isin(bad_rows)]
    rows_of = dict(iter(good.groupby(good["row"].map(located.paths), sort=True)))
    paths = list(rows_of)
    noted = _one_per_note(paths, facts)[:SHEET_NOTED]
    rest = [path for path in paths if path not in noted]
    rng = np.random.default_rng(SHEET_SEED)
    count = min(SHEET_IMAGES - len(noted), len(rest))
    chosen = noted + [rest[i] for i in sorted(rng.choice(len(rest), count, replace=False))]
    tiles = []
    for path in chosen:
        rows = rows_of[path]
        caption = [f"{path.parent.name}/{path.stem}", f"{len(rows)} box(es)"]
        caption += [", ".join(facts[path].notes())] if facts[path].notes() else []
        tiles.append(contact_sheet.Tile(path, _boxes(rows), caption))
    return tiles


def _text(value: Any) -> str:
    """A cell for a caption: "?" where it is empty."""
    return "?" if value is None or pd.isna(value) else str(value)


def quarantine_tiles(
    tables: dict[str, pd.DataFrame],
    findings: Findings,
    located: dict[str, Located],
    facts: dict[Path, ImageFacts],
) -> list[contact_sheet.Tile]:
    """Quarantined images with their reasons: one per check first, then in split/row order."""
    images: dict[tuple[str, str], list[int]] = {}  # (split, image name) -> bad rows
    for split in SPLITS:
        table = tables[split].set_index("row", drop=False)
        for row in findings.bad_rows(split):
            folder, image_id = (table.at[row, column] for column in ("folder", "image_id"))
            name = f"{_text(folder)}/{_text(image_id)}"
            images.setdefault((split, name), []).append(row)
    reasons = {
        key: {reason for row in rows for reason in findings.reasons(key[0], row)}
        for key, rows in images.items()
    }
    chosen: list[tuple[str, str]] = []
    for check in CHECKS:
        first = next((key for key in images if check in reasons[key] and key not in chosen), None)
        if first is not None:
            chosen.append(first)
    chosen += [key for key in images if key not in chosen][: max(0, SHEET_IMAGES - len(chosen))]
    tiles = []
    for split, name in chosen[:SHEET_IMAGES]:
        rows = images[split, name]
        path = located[split].paths.get(rows[0])
        usable = path is not None and facts[path].decodable
        table = tables[split]
        ordered = [check for check in CHECKS if check in reasons[split, name]]
        caption = [f"{split}: {name}", f"rows {', '.join(map(str, rows))}", ", ".join(ordered)]
        boxes = _boxes(table[table["row"].isin(rows)]) if usable else []
        tiles.append(contact_sheet.Tile(path if usable else None, boxes, caption))
    return tiles


def write_contact_sheets(
    tables: dict[str, pd.DataFrame],
    findings: Findings,
    located: dict[str, Located],
    facts: dict[Path, ImageFacts],
    target: Path,
) -> list[Path]:
    """One sheet per split of clean images with their boxes, one of quarantined images."""
    written = []
    for split in SPLITS:
        tiles = split_tiles(tables[split], findings.bad_rows(split), located[split], facts)
        title = f"{split}: {len(tiles)} clean images (noted ones first, then random), boxes as read"
        written.append(contact_sheet.write_sheet(tiles, title, target / f"{split}.png"))
    tiles = quarantine_tiles(tables, findings, located, facts)
    title = f"quarantine: {len(tiles)} images with the reasons of their rows"
    written.append(contact_sheet.write_sheet(tiles, title, target / "quarantine.png"))
    return written


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def build_report(
    tables: dict[str, pd.DataFrame],
    findings: Findings,
    facts: dict[Path, ImageFacts],
    classes: list[str] | None,
    unreferenced: list[str],
    runner: expectations.SuiteRunner,
    params: Params,
) -> dict[str, Any]:
    """Numbers at the top level (DVC metrics); only lists under "details" (DVC skips lists)."""
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
            "per_check_split": _per_check_split(findings),
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


def summary_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the per-check summary: rows failing each check, per split."""
    header = ["check", *SPLITS, "total", "what it means"]
    rows = []
    for check, total in report["per_check"].items():
        per_split = next(r for r in report["details"]["per_check_split"] if r["check"] == check)
        rows.append([check, *(str(per_split[s]) for s in SPLITS), str(total), CHECKS[check]])
    return header, rows


def _per_check_split(findings: Findings) -> list[dict[str, Any]]:
    """Rows failing each check, per split (a list: DVC shows only the top-level numbers)."""
    counts = {check: dict.fromkeys(SPLITS, 0) for check in CHECKS}
    for (split, _), found in findings.rows.items():
        for check in found:
            counts[check][split] += 1
    return [{"check": check, **per_split} for check, per_split in counts.items()]


def log_summary(report: dict[str, Any]) -> None:
    """A readable table of rows per split and failures per check."""
    header, rows = summary_table(report)
    lines = [
        f"validate: {report['rows_total']} rows, {report['rows_clean']} clean, "
        f"{report['rows_quarantined']} quarantined ({report['bad_fraction']:.1%})",
        f"  {'split':<18}" + "".join(f"{s:>8}" for s in SPLITS),
    ]
    for key in ("rows", "clean", "quarantined"):
        lines.append(f"  {key:<18}" + "".join(f"{report['per_split'][s][key]:>8}" for s in SPLITS))
    lines.append(f"  {'check':<18}" + "".join(f"{name:>8}" for name in header[1:-1]))
    lines += [f"  {row[0]:<18}" + "".join(f"{v:>8}" for v in row[1:-1]) for row in rows]
    if report["notes"]:
        lines.append(
            "  notes (handled by the loader): "
            + ", ".join(f"{name} {count}" for name, count in report["notes"].items())
        )
    warned = [f"{name} {count}" for name, count in report["warnings"].items() if count]
    if warned:
        lines.append("  warnings: " + ", ".join(warned))
    if report["unreferenced_images"]:
        lines.append(f"  {report['unreferenced_images']} image file(s) referenced by no row")
    log.info("\n".join(lines))


def summary_markdown(report: dict[str, Any], outputs: Outputs) -> str:
    """The Prefect artifact: rows per split, failures per check, where to look next."""
    header, rows = summary_table(report)
    lines = [
        "# snackloc validate",
        "",
        f"**{report['rows_total']}** rows: **{report['rows_clean']}** clean, "
        f"**{report['rows_quarantined']}** quarantined ({report['bad_fraction']:.1%}; "
        f"the stage fails above {report['max_bad_fraction']:.0%}).",
        "",
        "| split | rows | clean | quarantined |",
        "|---|---|---|---|",
        *(
            f"| {split} | {c['rows']} | {c['clean']} | {c['quarantined']} |"
            for split, c in report["per_split"].items()
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        "Notes (handled by the loader): "
        + (", ".join(f"{k} {v}" for k, v in report["notes"].items()) or "none"),
        "",
        "Warnings: " + ", ".join(f"{k} {v}" for k, v in report["warnings"].items()),
        "",
        f"Unreferenced image files: {report['unreferenced_images']}. "
        f"Great Expectations: {report['expectations']['evaluated']} expectation runs, "
        f"{report['expectations']['failed']} failed.",
        "",
        f"Files: quarantine `{outputs.quarantine}`, report `{outputs.validate_report}`, "
        f"Data Docs `{docs_dir(outputs) / 'index.html'}`, contact sheets "
        f"`{sheets_dir(outputs)}/` (train, val, test, quarantine).",
    ]
    return "\n".join(lines)


def _threshold_error(report: dict[str, Any], outputs: Outputs) -> UserError:
    failing = [(name, count) for name, count in report["per_check"].items() if count]
    top = sorted(failing, key=lambda item: -item[1])[:5]  # stable: ties keep check order
    checks = ", ".join(f"{name} ({count})" for name, count in top)
    return UserError(
        f"validation failed: {report['rows_quarantined']} of {report['rows_total']} rows "
        f"({report['bad_fraction']:.1%}) are bad, more than validate.max_bad_fraction = "
        f"{report['max_bad_fraction']:.1%}. Top checks: {checks}. Every bad row and why is in "
        f"{outputs.quarantine}; the full report is {outputs.validate_report}, pictures in "
        f"{sheets_dir(outputs)}.",
        hint="fix the data, or raise validate.max_bad_fraction in params.yaml",
    )


# --------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------


def run(params: Params, outputs: Outputs, progress: bool = True) -> dict[str, Any]:
    """Validate every split; write clean rows, quarantine, class list, report and pictures.

    Returns the report plus a ``markdown`` summary. Raises UserError for a missing or
    unreadable CSV, an unresolvable class list, or a bad fraction above
    ``validate.max_bad_fraction`` (the latter two after writing every output).
    """
    root, limits, classes_param = Path(params.data.root), params.validate_, params.data.classes
    raw = {
        split: _rename_clashes(read_raw_annotations(annotations_path(root, split)))
        for split in SPLITS
    }
    tables = {split: expectations.table_frame(frame) for split, frame in raw.items()}
    findings = Findings()
    findings.warnings["column_order"] = sum(header_out_of_order(raw[s]) for s in SPLITS)

    runner = expectations.SuiteRunner(expectations.run_identity(tables, (limits, classes_param)))
    findings.add_gx(runner.run("annotations", expectations.annotation_rules(limits), tables))
    located = {split: locate_images(root, split, tables[split]) for split in SPLITS}
    facts = check_images(located, limits, findings, progress)
    referenced = {target for where in located.values() for target in where.targets}
    unreferenced = unreferenced_images(root, referenced)

    classes: list[str] | None = None
    class_error: UserError | None = None
    try:
        classes = resolve_class_list(params, tables["train"], findings.bad_rows("train"))
    except UserError as exc:  # raised below, once the quarantine shows why
        class_error = exc
    if classes is not None:
        findings.add_gx(runner.run("classes", expectations.class_rules(classes), tables))
        clean_train = clean_frame(tables["train"], findings.bad_rows("train"))["class_name"]
        if unused := diagnose.unused_classes(classes, list(clean_train), params.data.classes):
            log.warning(unused)
    docs = (
        runner.build_docs(docs_dir(outputs))
        if limits.data_docs
        else expectations.docs_placeholder(docs_dir(outputs))
    )

    for split in SPLITS:
        clean = clean_frame(tables[split], findings.bad_rows(split))
        assert len(clean) + len(findings.bad_rows(split)) == len(raw[split]), split
        write_csv(outputs.validated(split), clean)
    quarantine = quarantine_frame(raw, findings, _original_columns(raw))
    write_csv(outputs.quarantine, quarantine)
    sheets = write_contact_sheets(tables, findings, located, facts, sheets_dir(outputs))
    report = build_report(tables, findings, facts, classes, unreferenced, runner, params)
    report["details"]["files"] = [str(docs), *(str(path) for path in sheets)]
    write_json(outputs.validate_report, report)
    log_summary(report)

    # Name a whole file's one mistake (pixels, column order...), not what it caused.
    cause = diagnose.whole_file(root, tables, findings.rows, classes, params.data.classes)
    failing = class_error is not None or report["bad_fraction"] > limits.max_bad_fraction
    failing = failing or (cause is not None and cause.every_row)
    if cause is not None and failing:
        raise UserError(f"{cause.message}. The rows are in {outputs.quarantine}", cause.hint)
    if cause is not None:
        log.warning("%s (quarantined; hint: %s)", cause.message, cause.hint)
    if class_error is not None:
        raise class_error
    write_json(outputs.classes, {"classes": classes})
    if report["bad_fraction"] > limits.max_bad_fraction:
        raise _threshold_error(report, outputs)
    return {**report, "markdown": summary_markdown(report, outputs)}
