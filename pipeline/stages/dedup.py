"""Stage "dedup": merge duplicate annotations, remove duplicate images, stop split leakage.

Reads the validated annotations of every split and runs the steps of ``STEPS`` in order,
each on the rows the previous steps kept:

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
   (found by multi-index hashing, ``pipeline.data.quality.hashindex``), form groups. In each
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

import hashlib
import io
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from pipeline.core.config import DedupParams, Params
from pipeline.core.errors import UserError
from pipeline.core.files import write_csv, write_json
from pipeline.core.paths import Outputs
from pipeline.data.boxes import iou
from pipeline.data.contract import (
    BOX_COLUMNS,
    SPLITS,
    open_displayed,
    read_clean_annotations,
    safe_image_path,
)
from pipeline.data.quality import hashindex

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = (
    "duplicate_row", "duplicate_box", "duplicate_image", "near_duplicate_image", "leaked_image",
)  # fmt: skip
DUPLICATES_COLUMNS: list[str] = [
    "split", "row", "image_id", "folder", "class_name", "kind",
    "kept_split", "kept_row", "kept_image_id", "detail",
]  # fmt: skip
GROUPS_FILE = "groups.json"  # under outputs.dedup_dir
HASH_WORKERS = 2  # decoding and hashlib release the GIL
HASH_DECODE_SIDE = 64  # JPEGs are decoded at reduced scale, at least this many pixels a side
IMAGE_KEY = ["split", "folder", "image_id"]  # one image file
IOU_BINS = np.linspace(0.0, 1.0, 11)


def groups_path(outputs: Outputs) -> Path:
    """Where the duplicate groups file goes (a DVC out of the dedup stage)."""
    return outputs.dedup_dir / GROUPS_FILE


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
    updates: dict[int, list[float]] = field(default_factory=dict)  # index -> merged box
    metrics: dict[str, Any] = field(default_factory=dict)  # numbers: report top level
    details: dict[str, Any] = field(default_factory=dict)  # report "details"
    groups: dict[str, Any] = field(default_factory=dict)  # groups.json


@dataclass(frozen=True)
class DedupContext:
    root: Path
    params: DedupParams
    progress: bool = True


Step = Callable[[pd.DataFrame, DedupContext], StepResult]


# --------------------------------------------------------------------------------------
# Rows and boxes
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


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fingerprint:
    sha256: str
    phash: int  # 64-bit perceptual hash of the displayed image


def perceptual_hash(image: Image.Image) -> int:
    """pHash (imagehash) of an image as a 64-bit integer."""
    import imagehash  # imports scipy: only the dedup stage needs it

    bits = imagehash.phash(image).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def fingerprint(path: Path) -> Fingerprint:
    """sha256 of the file's bytes and the pHash of the image as displayed (EXIF applied).

    The file is read once. JPEGs decode at a reduced scale (``draft``): the hash only needs
    32x32 pixels, and this is several times faster than a full decode.
    """
    data = path.read_bytes()
    shown = open_displayed(io.BytesIO(data), HASH_DECODE_SIDE)
    return Fingerprint(hashlib.sha256(data).hexdigest(), perceptual_hash(shown))


def fingerprint_images(paths: list[Path], progress: bool) -> list[Fingerprint]:
    """Fingerprint each file on a small thread pool, in the order given."""
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} validated image(s) no longer exist, e.g. {missing[0]}",
            hint="the data changed after validation: re-run `dvc repro`",
        )
    with ThreadPoolExecutor(HASH_WORKERS) as pool:
        return list(
            tqdm(
                pool.map(fingerprint, paths),
                total=len(paths),
                unit="img",
                desc="dedup: hashing images",
                disable=not progress,
            )
        )


def image_groups(prints: list[Fingerprint], radius: int) -> list[list[int]]:
    """Groups (positions, ascending) of images with equal bytes or pHashes within ``radius``.

    Linked pairs chain: A~B and B~C put A, B and C in one group. Equal hashes are linked to
    their first occurrence, so a thousand identical images cost a thousand links, not a
    million pairs.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(prints)
    if n < 2:
        return []
    phashes = [p.phash for p in prints]
    values, first = np.unique(np.array(phashes, dtype=np.uint64), return_index=True)
    near = first[hashindex.pairs_within(values, radius)].reshape(-1, 2)
    links = [_links_to_first([p.sha256 for p in prints]), _links_to_first(phashes), near]
    edges = np.concatenate(links)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        groups.setdefault(int(label), []).append(position)
    return [members for members in groups.values() if len(members) > 1]


def _links_to_first(keys: list) -> np.ndarray:
    """(first position of the key, position) for every repeated key."""
    first: dict = {}
    links = [(first.setdefault(key, pos), pos) for pos, key in enumerate(keys)]
    return np.array([link for link in links if link[0] != link[1]], dtype=np.int64).reshape(-1, 2)


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
        f"box merges and leaks: `{groups_path(outputs)}`.",
    ]
    return "\n".join(lines)


def log_summary(report: dict[str, Any], params: DedupParams) -> None:
    rows = summary_lines(report, params)
    width = max(len(label) for label, _ in rows)
    lines = ["dedup summary", *(f"  {label:<{width}}  {value:>12}" for label, value in rows)]
    log.info("\n".join(lines))


def _leakage_error(report: dict[str, Any], groups: dict[str, Any], outputs: Outputs) -> UserError:
    example = groups["leaks"][0]
    return UserError(
        f"dedup failed: {report['leaked_images']} val/test image(s) duplicate an image of an "
        f"earlier split (e.g. {example['image']} = {example['duplicates']}) and dedup.leakage "
        f"is 'fail'. Every pair is under \"leaks\" in {groups_path(outputs)}.",
        hint="remove the copies from the data, or set dedup.leakage: drop_from_eval",
    )


def run(params: Params, outputs: Outputs, progress: bool = True) -> dict[str, Any]:
    """Deduplicate the validated splits; write deduped rows, duplicates, groups and a report.

    Returns the report plus a ``markdown`` summary. Raises UserError for missing inputs, and
    for leakage when ``dedup.leakage`` is "fail" (after writing every output).
    """
    rows = read_validated(outputs)
    ctx = DedupContext(Path(params.data.root), params.dedup, progress)
    removals: list[Removal] = []
    results: list[StepResult] = []
    for step in STEPS:
        removed = {removal.index for removal in removals}
        result = step(rows.drop(index=list(removed)), ctx)
        removals += result.removals
        results.append(result)

    removed = {removal.index for removal in removals}
    assert len(removed) == len(removals), "a row was removed twice"
    kept = rows.drop(index=list(removed))
    for result in results:
        for index, box in result.updates.items():
            if index in kept.index:  # its image may have gone as a duplicate since
                kept.loc[index, BOX_COLUMNS] = box
    columns = [col for col in rows.columns if col != "split"]
    for split in SPLITS:
        out = kept.loc[kept["split"] == split, columns]
        removed_here = sum(1 for r in removals if rows.at[r.index, "split"] == split)
        assert len(out) + removed_here == int((rows["split"] == split).sum()), split
        write_csv(outputs.deduped(split), out)
    write_csv(outputs.duplicates, duplicates_frame(rows, removals))
    groups = {key: value for result in results for key, value in result.groups.items()}
    write_json(groups_path(outputs), groups)
    report = build_report(rows, removals, results)
    write_json(outputs.dedup_report, report)
    log_summary(report, params.dedup)
    if params.dedup.leakage == "fail" and groups["leaks"]:
        raise _leakage_error(report, groups, outputs)
    return {**report, "markdown": summary_markdown(report, params.dedup, outputs)}
