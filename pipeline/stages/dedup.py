"""Stage "dedup": merge duplicate annotations, remove duplicate images, stop split leakage.

Reads the validated annotations of every split and runs the steps of ``STEPS`` in order
(pipeline/data/quality/duplicates.py), each on the rows the previous steps kept:

1. ``duplicate_row`` — the same image, class and four coordinates twice in a split: the
   first row is kept.
2. ``duplicate_box`` — the same image and class with boxes of IoU above
   ``dedup.box_iou_threshold``: one object annotated twice. The boxes are merged into the
   first row (``dedup.box_merge``: their coordinate-wise mean, or the first box as written);
   the other rows are removed. The IoU of every same-image, same-class box pair is reported
   (a histogram), so the threshold can be chosen from the data.
3. ``duplicate_image`` / ``near_duplicate_image`` / ``leaked_image`` — every image gets a
   sha256 of its bytes and a 64-bit perceptual hash (pHash of the displayed image); images
   with the same bytes, or hashes at most ``dedup.near_duplicate_distance`` bits apart
   (pipeline/data/quality/fingerprints.py and ``hashindex``), form groups. In each
   group the first image in (train, val, test, row) order is kept. Other copies in the same
   split are removed. A copy in a later split is leakage (evaluation would see a training image):
   ``dedup.leakage`` removes it from that split (``drop_from_eval``), only reports it
   (``keep``), or fails the stage after writing every output (``fail``).

Every removed row goes to ``duplicates.csv`` with the row kept in its place (the pair), so
``validated rows == deduped rows + removed rows`` (asserted per split). ``groups.json`` holds
the image groups with their hashes and distances, the box merges and the leaks;
``report.json`` the counts (DVC metrics).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core.config import DedupParams, Params
from pipeline.core.errors import UserError
from pipeline.core.files import write_csv, write_json
from pipeline.core.paths import Outputs
from pipeline.data.contract import SPLITS, read_clean_annotations
from pipeline.data.quality.duplicates import (
    KINDS,
    DedupContext,
    Removal,
    StepResult,
    deduplicated,
    find_duplicates,
)

log = logging.getLogger(__name__)

DUPLICATES_COLUMNS: list[str] = [
    "split", "row", "image_id", "folder", "class_name", "kind",
    "kept_split", "kept_row", "kept_image_id", "detail",
]  # fmt: skip


def read_validated(outputs: Outputs) -> pd.DataFrame:
    """Every split's validated rows in one frame (train, val, test order), with a split column."""
    frames = []
    for split in SPLITS:
        path = outputs.validated(split)
        if not path.is_file():
            raise UserError(f"{path}: not found", hint="run the validate stage first")
        frames.append(read_clean_annotations(path).assign(split=split))
    return pd.concat(frames, ignore_index=True)


def duplicates_frame(rows: pd.DataFrame, removals: list[Removal]) -> pd.DataFrame:
    """One line per removed row, with the row kept in its place."""
    records = []
    for removal in removals:
        removed, kept = rows.loc[removal.index], rows.loc[removal.kept]
        records.append(
            {
                "split": removed["split"],
                "row": removed["row"],
                "image_id": removed["image_id"],
                "folder": removed["folder"],
                "class_name": removed["class_name"],
                "kind": removal.kind,
                "kept_split": kept["split"],
                "kept_row": kept["row"],
                "kept_image_id": kept["image_id"],
                "detail": removal.detail,
            }
        )
    frame = pd.DataFrame(records, columns=DUPLICATES_COLUMNS)
    order = frame["split"].map({split: n for n, split in enumerate(SPLITS)})
    return frame.assign(_order=order).sort_values(["_order", "row"]).drop(columns="_order")


def build_report(
    rows: pd.DataFrame, removals: list[Removal], results: list[StepResult]
) -> dict[str, Any]:
    """Numbers at the top level (DVC metrics); the IoU histogram (lists) under "details"."""
    kinds = Counter(removal.kind for removal in removals)
    removed_per_split = Counter(rows.loc[[r.index for r in removals], "split"])
    per_split = {}
    for split in SPLITS:
        rows_in = int((rows["split"] == split).sum())
        removed = removed_per_split.get(split, 0)
        per_split[split] = {"rows_in": rows_in, "rows_out": rows_in - removed, "removed": removed}
    report: dict[str, Any] = {
        "rows_in": len(rows),
        "rows_out": len(rows) - len(removals),
        "rows_removed": len(removals),
        "boxes_merged": kinds.get("duplicate_box", 0),
        "removed": {kind: kinds.get(kind, 0) for kind in KINDS},
        "per_split": per_split,
    }
    for result in results:
        report.update(result.metrics)
    report["details"] = {key: value for r in results for key, value in r.details.items()}
    return report


def summary_lines(report: dict[str, Any], params: DedupParams) -> list[tuple[str, str]]:
    """(label, value) lines of the summary shown in the log and the Prefect artifact."""
    lines = [("rows in", str(report["rows_in"])), ("rows out", str(report["rows_out"]))]
    lines += [(f"removed: {kind}", str(count)) for kind, count in report["removed"].items()]
    lines += [
        ("boxes merged", str(report["boxes_merged"])),
        ("same-class box pairs (IoU > threshold)",
         f"{report['box_pairs']} ({report['box_pairs_above_threshold']})"),
        ("images hashed", str(report["images_hashed"])),
        ("duplicate image groups", str(report["duplicate_image_groups"])),
        (f"leaked images ({params.leakage})", str(report["leaked_images"])),
    ]  # fmt: skip
    lines += [
        (f"{split} rows", f"{counts['rows_in']} -> {counts['rows_out']}")
        for split, counts in report["per_split"].items()
    ]
    return lines


def summary_markdown(report: dict[str, Any], params: DedupParams, outputs: Outputs) -> str:
    """The Prefect artifact: the summary table and where the details are."""
    lines = ["# snackloc dedup", "", "| | |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in summary_lines(report, params)]
    lines += [
        "",
        f"Removed rows with the row kept in their place: `{outputs.duplicates}`; image groups, "
        f"box merges and leaks: `{outputs.dedup_groups}`.",
    ]
    return "\n".join(lines)


def log_summary(report: dict[str, Any], params: DedupParams) -> None:
    """The summary as one aligned log message."""
    rows = summary_lines(report, params)
    width = max(len(label) for label, _ in rows)
    lines = ["dedup summary", *(f"  {label:<{width}}  {value:>12}" for label, value in rows)]
    log.info("\n".join(lines))


def _leakage_error(report: dict[str, Any], groups: dict[str, Any], outputs: Outputs) -> UserError:
    example = groups["leaks"][0]
    return UserError(
        f"dedup failed: {report['leaked_images']} val/test image(s) duplicate an image of an "
        f"earlier split (e.g. {example['image']} = {example['duplicates']}) and dedup.leakage "
        f"is 'fail'. Every pair is under \"leaks\" in {outputs.dedup_groups}.",
        hint="remove the copies from the data, or set dedup.leakage: drop_from_eval",
    )


def run(params: Params, outputs: Outputs, progress: bool = True) -> dict[str, Any]:
    """Deduplicate the validated splits; write deduped rows, duplicates, groups and a report.

    Returns the report plus a ``markdown`` summary. Raises UserError for missing inputs, and
    for leakage when ``dedup.leakage`` is "fail" (after writing every output).
    """
    rows = read_validated(outputs)
    ctx = DedupContext(Path(params.data.root), params.dedup, progress)
    removals, results = find_duplicates(rows, ctx)
    kept = deduplicated(rows, removals, results)
    columns = [col for col in rows.columns if col != "split"]
    for split in SPLITS:
        out = kept.loc[kept["split"] == split, columns]
        removed_here = sum(1 for r in removals if rows.at[r.index, "split"] == split)
        assert len(out) + removed_here == int((rows["split"] == split).sum()), split
        write_csv(outputs.deduped(split), out)
    write_csv(outputs.duplicates, duplicates_frame(rows, removals))
    groups = {key: value for result in results for key, value in result.groups.items()}
    write_json(outputs.dedup_groups, groups)
    report = build_report(rows, removals, results)
    write_json(outputs.dedup_report, report)
    log_summary(report, params.dedup)
    if params.dedup.leakage == "fail" and groups["leaks"]:
        raise _leakage_error(report, groups, outputs)
    return {**report, "markdown": summary_markdown(report, params.dedup, outputs)}
