"""The dedup steps: duplicate rows, duplicate boxes (merged), duplicate and leaked images.

Each step of ``STEPS`` takes the rows the previous steps kept and returns a ``StepResult``:
the rows it removes (each with the row kept in its place), merged boxes, report numbers and
the groups for ``groups.json``. ``find_duplicates`` runs them in order; ``deduplicated``
applies their result. The stage (pipeline/stages/dedup.py) reads, writes and logs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.config import DedupParams
from pipeline.core.errors import UserError
from pipeline.data.boxes import iou
from pipeline.data.contract import BOX_COLUMNS, safe_image_path
from pipeline.data.quality import hashindex
from pipeline.data.quality.fingerprints import Fingerprint, fingerprint_images, image_groups

KINDS: tuple[str, ...] = (
    "duplicate_row", "duplicate_box", "duplicate_image", "near_duplicate_image", "leaked_image",
)  # fmt: skip
IMAGE_KEY = ["split", "folder", "image_id"]  # one image file
IOU_BINS = np.linspace(0.0, 1.0, 11)


@dataclass(frozen=True)
class Removal:
    """One removed row (``index`` into the combined frame) and the row kept in its place."""

    index: int
    kind: str
    kept: int
    detail: str


@dataclass
class StepResult:
    """What one step found."""

    removals: list[Removal] = field(default_factory=list)
    updates: dict[int, list[float]] = field(default_factory=dict)  # index -> merged box
    metrics: dict[str, Any] = field(default_factory=dict)  # numbers: report top level
    details: dict[str, Any] = field(default_factory=dict)  # report "details"
    groups: dict[str, Any] = field(default_factory=dict)  # groups.json


@dataclass(frozen=True)
class DedupContext:
    """What every step may read besides the rows: the data root and the dedup params."""

    root: Path
    params: DedupParams
    progress: bool = True


Step = Callable[[pd.DataFrame, DedupContext], StepResult]


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


def cluster_boxes(boxes: np.ndarray, threshold: float) -> list[tuple[list[int], list[float]]]:
    """Greedy clusters: each box joins the earlier cluster whose first box it overlaps most,
    if that IoU is above ``threshold``; else it starts a cluster.

    Returns (member positions, IoU of each member with the cluster's first box) per cluster.
    """
    clusters: list[tuple[list[int], list[float]]] = []
    for position, box in enumerate(boxes):
        if clusters:
            overlaps = iou(box, boxes[[members[0] for members, _ in clusters]])
            best = int(np.argmax(overlaps))
            if overlaps[best] > threshold:
                clusters[best][0].append(position)
                clusters[best][1].append(float(overlaps[best]))
                continue
        clusters.append(([position], [1.0]))
    return clusters


def pair_ious(boxes: np.ndarray) -> np.ndarray:
    """IoU of every pair of boxes (upper triangle of the IoU matrix)."""
    i, j = np.triu_indices(len(boxes), k=1)
    return iou(boxes[i], boxes[j])


def merge_duplicate_boxes(rows: pd.DataFrame, ctx: DedupContext) -> StepResult:
    """Boxes of one image and class above the IoU threshold: one object, merged into one row."""
    threshold, mean = ctx.params.box_iou_threshold, ctx.params.box_merge == "mean"
    result = StepResult(groups={"box_merges": []})
    pair_values = []
    for (split, folder, image_id, class_name), group in rows.groupby(
        [*IMAGE_KEY, "class_name"], sort=False
    ):
        if len(group) < 2:
            continue
        boxes = group[BOX_COLUMNS].to_numpy(dtype=np.float64)
        pair_values.append(pair_ious(boxes))
        for members, overlaps in cluster_boxes(boxes, threshold):
            if len(members) < 2:
                continue
            keeper = group.index[members[0]]
            merged = boxes[members].mean(axis=0).round(6) if mean else boxes[members[0]]
            if mean:
                result.updates[keeper] = merged.tolist()
            action = "merged into it (mean box)" if mean else "its box kept"
            for position, overlap in zip(members[1:], overlaps[1:], strict=True):
                detail = f"IoU {overlap:.3f} > {threshold:g} with row {rows.at[keeper, 'row']}; "
                detail += action
                result.removals.append(
                    Removal(group.index[position], "duplicate_box", keeper, detail)
                )
            result.groups["box_merges"].append(
                {
                    "image": f"{split}/{folder}/{image_id}.jpg",
                    "class_name": class_name,
                    "rows": [int(rows.at[group.index[p], "row"]) for p in members],
                    "ious": [round(value, 4) for value in overlaps[1:]],
                    "boxes": boxes[members].round(6).tolist(),
                    "result": [round(float(value), 6) for value in merged],
                }
            )
    values = np.concatenate(pair_values) if pair_values else np.empty(0)
    counts, _ = np.histogram(values, bins=IOU_BINS)
    result.metrics = {
        "box_pairs": len(values),
        "box_pairs_overlapping": int((values > 0).sum()),
        "box_pairs_above_threshold": int((values > threshold).sum()),
    }
    result.details = {
        "box_pair_iou_histogram": {"edges": IOU_BINS.round(2).tolist(), "counts": counts.tolist()}
    }
    return result


@dataclass(frozen=True)
class Decision:
    """What happens to one image of a group: ``removed`` or kept, and the image it copies."""

    image: int
    kept: int
    leak: bool
    removed: bool


def plan_group(members: list[int], splits: list[str], drop_leaks: bool) -> list[Decision]:
    """Decide each member of a group (positions in (split, row) order) except the first.

    The first member is kept. A member in a split that already keeps a member is removed as
    its duplicate. A member in a later split is a leak: removed when ``drop_leaks``, else
    kept (and its split's later members are removed as its duplicates).
    """
    keeper, *others = members
    kept_in = {splits[keeper]: keeper}
    plan = []
    for image in others:
        split = splits[image]
        if split in kept_in:
            plan.append(Decision(image, kept_in[split], leak=False, removed=True))
        else:
            plan.append(Decision(image, keeper, leak=True, removed=drop_leaks))
            if not drop_leaks:
                kept_in[split] = image
    return plan


def find_duplicate_images(rows: pd.DataFrame, ctx: DedupContext) -> StepResult:
    """Exact and near-duplicate images: keep the first, remove (or report) the others."""
    first_rows = rows.drop_duplicates(IMAGE_KEY)  # one row per image, in (split, row) order
    images = list(first_rows[IMAGE_KEY].itertuples(index=False, name=None))
    paths = [_image_file(ctx, *image) for image in images]
    prints = fingerprint_images(paths, ctx.progress)
    names = [_relative(path, ctx.root) for path in paths]
    splits = [image[0] for image in images]
    rows_of = rows.groupby(IMAGE_KEY, sort=False).groups
    drop_leaks = ctx.params.leakage == "drop_from_eval"

    result = StepResult(groups={"image_groups": [], "leaks": []})
    for members in image_groups(prints, ctx.params.near_duplicate_distance):
        decisions = plan_group(members, splits, drop_leaks)
        result.groups["image_groups"].append(_group_record(members, decisions, names, prints))
        for decision in decisions:
            kept, copy = prints[decision.kept], prints[decision.image]
            exact = kept.sha256 == copy.sha256
            how = _copy_detail(names[decision.kept], kept, copy)
            if decision.leak:
                result.groups["leaks"].append(
                    {
                        "image": names[decision.image],
                        "duplicates": names[decision.kept],
                        "distance": _distance(kept, copy),
                        "exact": exact,
                        "removed": decision.removed,
                    }
                )
            if not decision.removed:
                continue
            kind = "leaked_image" if decision.leak else _copy_kind(exact)
            kept_row = first_rows.index[decision.kept]
            result.removals += [
                Removal(index, kind, kept_row, how) for index in rows_of[images[decision.image]]
            ]
    groups = result.groups["image_groups"]
    result.metrics = {
        "images_hashed": len(images),
        "duplicate_image_groups": len(groups),
        "images_in_groups": sum(len(group["members"]) for group in groups),
        "leaked_images": len(result.groups["leaks"]),
    }
    return result


def _copy_detail(kept_name: str, kept: Fingerprint, copy: Fingerprint) -> str:
    if kept.sha256 == copy.sha256:
        return f"same bytes as {kept_name} (sha256 {kept.sha256[:12]})"
    return f"near-duplicate of {kept_name} (pHash distance {_distance(kept, copy)})"


def _copy_kind(exact: bool) -> str:
    return "duplicate_image" if exact else "near_duplicate_image"


def _distance(a: Fingerprint, b: Fingerprint) -> int:
    return int(hashindex.hamming(a.phash, b.phash))


def _group_record(
    members: list[int], decisions: list[Decision], names: list[str], prints: list[Fingerprint]
) -> dict[str, Any]:
    """One image group for groups.json: every member with its hashes and what became of it."""
    fate = {d.image: d for d in decisions}
    keeper = prints[members[0]]
    records = []
    for member in members:
        decision = fate.get(member)
        records.append(
            {
                "image": names[member],
                "sha256": prints[member].sha256,
                "phash": f"{prints[member].phash:016x}",
                "distance_to_kept": _distance(keeper, prints[member]),
                "action": "kept" if decision is None or not decision.removed else "removed",
                "leak": bool(decision and decision.leak),
            }
        )
    return {"kept": names[members[0]], "members": records}


def _image_file(ctx: DedupContext, split: str, folder: str, image_id: str) -> Path:
    path = safe_image_path(ctx.root, split, folder, image_id)
    if path is None:  # validate quarantines these; a hand-edited file could still have one
        raise UserError(
            f"{split}/{folder}/{image_id}: image path leaves the data root",
            hint="re-run the validate stage",
        )
    return path


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


STEPS: tuple[Step, ...] = (find_duplicate_rows, merge_duplicate_boxes, find_duplicate_images)


def find_duplicates(
    rows: pd.DataFrame, ctx: DedupContext
) -> tuple[list[Removal], list[StepResult]]:
    """Run ``STEPS`` in order, each on the rows the earlier ones kept."""
    removals: list[Removal] = []
    results: list[StepResult] = []
    for step in STEPS:
        removed = {removal.index for removal in removals}
        result = step(rows.drop(index=list(removed)), ctx)
        removals += result.removals
        results.append(result)
    return removals, results


def deduplicated(
    rows: pd.DataFrame, removals: list[Removal], results: list[StepResult]
) -> pd.DataFrame:
    """The rows that stay, with their merged boxes."""
    removed = {removal.index for removal in removals}
    assert len(removed) == len(removals), "a row was removed twice"
    kept = rows.drop(index=list(removed))
    for result in results:
        for index, box in result.updates.items():
            if index in kept.index:  # its image may have gone as a duplicate since
                kept.loc[index, BOX_COLUMNS] = box
    return kept
