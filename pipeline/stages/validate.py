"""Stage "validate": check every annotation row and every image it points at.

Each row of ``annotations-<split>.csv`` either passes every check and goes to the split's
clean file, or goes to the quarantine file with every failing check named — nothing is
dropped or altered silently (``rows in == clean + quarantined`` is asserted per split).

Where each check lives (``CHECKS`` in ``pipeline.data.quality.checks`` lists them all, in
report order):

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.config import Params
from pipeline.core.errors import UserError
from pipeline.core.files import write_csv, write_json
from pipeline.core.paths import Outputs
from pipeline.data.contract import SPLITS, annotations_path, read_raw_annotations
from pipeline.data.quality import diagnose, expectations
from pipeline.data.quality.checks import (
    CHECKS,
    Findings,
    Located,
    build_report,
    check_images,
    clean_frame,
    header_out_of_order,
    locate_images,
    original_columns,
    quarantine_frame,
    rename_clashes,
    resolve_class_list,
)
from pipeline.data.quality.contact_sheet import write_contact_sheets
from pipeline.data.quality.imagecheck import ImageFacts, unreferenced_images

log = logging.getLogger(__name__)


def summary_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the per-check summary: rows failing each check, per split."""
    header = ["check", *SPLITS, "total", "what it means"]
    rows = []
    for check, total in report["per_check"].items():
        per_split = next(r for r in report["details"]["per_check_split"] if r["check"] == check)
        rows.append([check, *(str(per_split[s]) for s in SPLITS), str(total), CHECKS[check]])
    return header, rows


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
        f"Data Docs `{outputs.data_docs / 'index.html'}`, contact sheets "
        f"`{outputs.contact_sheets}/` (train, val, test, quarantine).",
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
        f"{outputs.contact_sheets}.",
        hint="fix the data, or raise validate.max_bad_fraction in params.yaml",
    )


def run(params: Params, outputs: Outputs, progress: bool = True) -> dict[str, Any]:
    """Validate every split; write clean rows, quarantine, class list, report and pictures.

    Returns the report plus a ``markdown`` summary. Raises UserError for a missing or
    unreadable CSV, an unresolvable class list, or a bad fraction above
    ``validate.max_bad_fraction`` (the latter two after writing every output).
    """
    checked = check_splits(params, progress)
    report = write_outputs(checked, params, outputs)
    log_summary(report)
    stop_on_unusable_data(checked, report, params, outputs)
    write_json(outputs.classes, {"classes": checked.classes})
    if report["bad_fraction"] > params.validate_.max_bad_fraction:
        raise _threshold_error(report, outputs)
    return {**report, "markdown": summary_markdown(report, outputs)}


@dataclass
class Checked:
    """Every split read and checked: what the outputs are written from."""

    raw: dict[str, pd.DataFrame]  # the CSVs as read (every cell text)
    tables: dict[str, pd.DataFrame]  # with parsed coordinates and row numbers
    findings: Findings
    located: dict[str, Located]
    facts: dict[Path, ImageFacts]
    unreferenced: list[str]
    runner: expectations.SuiteRunner
    classes: list[str] | None
    class_error: UserError | None  # raised once the quarantine shows why


def check_splits(params: Params, progress: bool) -> Checked:
    """Read every split, run the tabular, image and class checks on it."""
    root, limits, classes_param = Path(params.data.root), params.validate_, params.data.classes
    raw = {
        split: rename_clashes(read_raw_annotations(annotations_path(root, split)))
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
    except UserError as exc:
        class_error = exc
    if classes is not None:
        findings.add_gx(runner.run("classes", expectations.class_rules(classes), tables))
        clean_train = clean_frame(tables["train"], findings.bad_rows("train"))["class_name"]
        if unused := diagnose.unused_classes(classes, list(clean_train), params.data.classes):
            log.warning(unused)
    return Checked(
        raw, tables, findings, located, facts, unreferenced, runner, classes, class_error
    )


def write_outputs(checked: Checked, params: Params, outputs: Outputs) -> dict[str, Any]:
    """Data Docs, clean CSVs, quarantine, contact sheets and the report; the report."""
    docs = (
        checked.runner.build_docs(outputs.data_docs)
        if params.validate_.data_docs
        else expectations.docs_placeholder(outputs.data_docs)
    )
    raw, tables, findings = checked.raw, checked.tables, checked.findings
    for split in SPLITS:
        clean = clean_frame(tables[split], findings.bad_rows(split))
        assert len(clean) + len(findings.bad_rows(split)) == len(raw[split]), split
        write_csv(outputs.validated(split), clean)
    quarantine = quarantine_frame(raw, findings, original_columns(raw))
    write_csv(outputs.quarantine, quarantine)
    sheets = write_contact_sheets(
        tables, findings, checked.located, checked.facts, outputs.contact_sheets
    )
    report = build_report(
        tables, findings, checked.facts, checked.classes, checked.unreferenced, checked.runner,
        params,
    )  # fmt: skip
    report["details"]["files"] = [str(docs), *(str(path) for path in sheets)]
    write_json(outputs.validate_report, report)
    return report


def stop_on_unusable_data(
    checked: Checked, report: dict[str, Any], params: Params, outputs: Outputs
) -> None:
    """Raise for a whole file wrong in one way, or no class list; warn of a milder cause."""
    # Name a whole file's one mistake (pixels, column order...), not what it caused.
    cause = diagnose.whole_file(
        Path(params.data.root),
        checked.tables,
        checked.findings.rows,
        checked.classes,
        params.data.classes,
    )
    failing = checked.class_error is not None
    failing = failing or report["bad_fraction"] > params.validate_.max_bad_fraction
    failing = failing or (cause is not None and cause.every_row)
    if cause is not None and failing:
        raise UserError(f"{cause.message}. The rows are in {outputs.quarantine}", cause.hint)
    if cause is not None:
        log.warning("%s (quarantined; hint: %s)", cause.message, cause.hint)
    if checked.class_error is not None:
        raise checked.class_error
