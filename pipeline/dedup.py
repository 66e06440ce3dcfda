"""Stage "dedup": remove duplicate annotations and duplicate images, recording each removal.

Reads the validated annotations of every split and runs the steps of ``STEPS`` in order,
each on the rows the previous steps kept:

1. ``duplicate_row`` — the same image, class and four coordinates twice in a split;
2. ``duplicate_box`` — the same image and class with boxes of IoU above
   ``dedup.box_iou_threshold``: one object annotated twice. The first row is kept as
   written (no merging, so every kept row is an original annotation);
3. ``duplicate_image`` / ``leaked_image`` — byte-identical image files (sha256). The first
   copy in (train, val, test, row) order is kept with its rows; the rows of every other copy
   are removed. A copy in a later split than the kept one is ``leaked_image``: evaluation
   must never see a training image.

Every removed row goes to the duplicates file with the row kept in its place, so
``validated rows == deduped rows + removed rows`` (asserted per split). A later step
(perceptual-hash near-duplicates) plugs in as one more function in ``STEPS``.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.boxes import iou
from pipeline.config import SPLITS, DedupParams, Params
from pipeline.dataio import (
    BOX_COLUMNS,
    read_clean_annotations,
    safe_image_path,
    write_csv,
    write_json,
)
from pipeline.errors import UserError
from pipeline.paths import Outputs

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("duplicate_row", "duplicate_box", "duplicate_image", "leaked_image")
DUPLICATES_COLUMNS: list[str] = [
    "split", "row", "image_id", "folder", "class_name", "kind",
    "kept_split", "kept_row", "kept_image_id", "detail",
]  # fmt: skip
HASH_WORKERS = 2  # hashlib releases the GIL on large buffers
IMAGE_KEY = ["split", "folder", "image_id"]  # one image file


@dataclass(frozen=True)
class Removal:
    """One removed row (``index`` into the combined frame) and the row kept in its place."""

    index: int
    kind: str
    kept: int
    detail: str


@dataclass
class StepResult:
    removals: list[Removal] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # goes under the report's "details"


@dataclass(frozen=True)
class DedupContext:
    root: Path
    params: DedupParams
    progress: bool = True


Step = Callable[[pd.DataFrame, DedupContext], StepResult]


# --------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------


def find_duplicate_rows(rows: pd.DataFrame, ctx: DedupContext) -> StepResult:
    """Rows identical in image, class and coordinates within a split: keep the first."""
    key = ["split", "folder", "image_id", "class_name", *BOX_COLUMNS]
    first_seen: dict[tuple, int] = {}
    result = StepResult()
    for index, values in zip(rows.index, rows[key].itertuples(index=False, name=None), strict=True):
        kept = first_seen.setdefault(values, index)
        if kept != index:
            result.removals.append(
                Removal(index, "duplicate_row", kept, f"same as row {rows.at[kept, 'row']}")
            )
    return result


def find_duplicate_boxes(rows: pd.DataFrame, ctx: DedupContext) -> StepResult:
    """Boxes of one image and class overlapping above the IoU threshold: keep the first."""
    threshold = ctx.params.box_iou_threshold
    result = StepResult()
    for _, group in rows.groupby([*IMAGE_KEY, "class_name"], sort=False):
        if len(group) < 2:
            continue
        boxes = group[BOX_COLUMNS].to_numpy(dtype=np.float64)
        kept: list[int] = []  # positions in `group`
        for position, index in enumerate(group.index):
            if kept:
                overlaps = iou(boxes[position], boxes[kept])
                best = int(np.argmax(overlaps))
                if overlaps[best] > threshold:
                    keeper = group.index[kept[best]]
                    detail = (
                        f"IoU {overlaps[best]:.3f} > {threshold:g} with row "
                        f"{rows.at[keeper, 'row']}"
                    )
                    result.removals.append(Removal(index, "duplicate_box", keeper, detail))
                    continue
            kept.append(position)
    return result


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def hash_images(paths: list[Path], progress: bool) -> list[str]:
    """sha256 of each file, on a small thread pool, in the order given."""
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} validated image(s) no longer exist, e.g. {missing[0]}",
            hint="the data changed after validation: re-run `dvc repro`",
        )
    with ThreadPoolExecutor(HASH_WORKERS) as pool:
        return list(
            tqdm(
                pool.map(sha256_file, paths),
                total=len(paths),
                unit="img",
                desc="dedup: hashing images",
                disable=not progress,
            )
        )


def _image_file(ctx: DedupContext, split: str, folder: str, image_id: str) -> Path:
    path = safe_image_path(ctx.root, split, folder, image_id)
    if path is None:  # validate quarantines these; a hand-edited file could still have one
        raise UserError(
            f"{split}/{folder}/{image_id}: image path leaves the data root",
            hint="re-run the validate stage",
        )
    return path


def find_duplicate_images(rows: pd.DataFrame, ctx: DedupContext) -> StepResult:
    """Byte-identical image files: keep the first copy, remove the rows of the others."""
    # Images in (split, row) order: the frame is already sorted that way.
    first_rows = rows.drop_duplicates(IMAGE_KEY)
    images = list(first_rows[IMAGE_KEY].itertuples(index=False, name=None))
    paths = [_image_file(ctx, *image) for image in images]
    groups: dict[str, list[int]] = defaultdict(list)  # digest -> positions in `images`
    for position, digest in enumerate(hash_images(paths, ctx.progress)):
        groups[digest].append(position)

    rows_of = rows.groupby(IMAGE_KEY, sort=False).groups
    result = StepResult(details={"images_hashed": len(images), "image_groups": []})
    for digest, positions in groups.items():
        if len(positions) < 2:
            continue
        keeper, *copies = positions
        kept_row = first_rows.index[keeper]
        result.details["image_groups"].append(
            {
                "sha256": digest,
                "kept": _relative(paths[keeper], ctx.root),
                "copies": [_relative(paths[copy], ctx.root) for copy in copies],
            }
        )
        for copy in copies:
            kind = "duplicate_image" if images[copy][0] == images[keeper][0] else "leaked_image"
            detail = f"same bytes as {_relative(paths[keeper], ctx.root)} (sha256 {digest[:12]})"
            result.removals += [
                Removal(index, kind, kept_row, detail) for index in rows_of[images[copy]]
            ]
    return result


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


STEPS: tuple[Step, ...] = (find_duplicate_rows, find_duplicate_boxes, find_duplicate_images)


# --------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------


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
    rows: pd.DataFrame, removals: list[Removal], details: dict[str, Any], params: Params
) -> dict[str, Any]:
    """Numbers at the top level (DVC metrics); the duplicate image groups under "details"."""
    kinds = Counter(removal.kind for removal in removals)
    removed_per_split = Counter(rows.loc[[r.index for r in removals], "split"])
    per_split = {}
    for split in SPLITS:
        rows_in = int((rows["split"] == split).sum())
        removed = removed_per_split.get(split, 0)
        per_split[split] = {"rows_in": rows_in, "rows_out": rows_in - removed, "removed": removed}
    return {
        "rows_in": len(rows),
        "rows_out": len(rows) - len(removals),
        "rows_removed": len(removals),
        "removed": {kind: kinds.get(kind, 0) for kind in KINDS},
        "images_hashed": details.get("images_hashed", 0),
        "duplicate_image_groups": len(details.get("image_groups", [])),
        "per_split": per_split,
        "details": {
            "box_iou_threshold": params.dedup.box_iou_threshold,
            "image_groups": details.get("image_groups", []),
        },
    }


def log_summary(report: dict[str, Any]) -> None:
    lines = [
        f"dedup: {report['rows_in']} rows in, {report['rows_out']} out, "
        f"{report['rows_removed']} removed"
    ]
    lines += [f"  {kind:<16}{count:>8}" for kind, count in report["removed"].items()]
    lines += [
        f"  {split:<16}{counts['rows_in']:>8} -> {counts['rows_out']}"
        for split, counts in report["per_split"].items()
    ]
    log.info("\n".join(lines))


def run(params: Params, outputs: Outputs, progress: bool = True) -> dict[str, Any]:
    """Deduplicate the validated splits; write deduped rows, the duplicates list and a report."""
    rows = read_validated(outputs)
    ctx = DedupContext(Path(params.data.root), params.dedup, progress)
    removals: list[Removal] = []
    details: dict[str, Any] = {}
    for step in STEPS:
        removed = {removal.index for removal in removals}
        result = step(rows.drop(index=list(removed)), ctx)
        removals += result.removals
        details.update(result.details)

    removed = {removal.index for removal in removals}
    assert len(removed) == len(removals), "a row was removed twice"
    kept = rows.drop(index=list(removed))
    columns = [col for col in rows.columns if col != "split"]
    for split in SPLITS:
        out = kept.loc[kept["split"] == split, columns]
        removed_here = sum(1 for r in removals if rows.at[r.index, "split"] == split)
        assert len(out) + removed_here == int((rows["split"] == split).sum()), split
        write_csv(outputs.deduped(split), out)
    write_csv(outputs.duplicates, duplicates_frame(rows, removals))
    report = build_report(rows, removals, details, params)
    write_json(outputs.dedup_report, report)
    log_summary(report)
    return report
