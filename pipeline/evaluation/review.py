"""Rank annotation rows by how likely they are wrong, from out-of-sample predictions (cleanlab).

The model answers one class and one box per image, so on an image with several rows it speaks
for one of them: the *judged* row is the row whose box overlaps the prediction most (IoU ≥
``MATCH_IOU``), else the row the model is trained to find (``select_targets``: a main-class box,
then the largest). The other rows of the image are ``not_judged`` by a two-head model: it
cannot tell whether a secondary object's label is right. A detector's list of every object
judges their class too (``score_secondary``), from the detections on each.

Scores, each in [0, 1], low = suspect, all computed over one pool (every scored split at
once, as cleanlab's scores depend on the pool):

- ``class``: ``cleanlab.rank.get_label_quality_scores`` of the judged row's class;
- ``box``: ``cleanlab.object_detection.rank.compute_badloc_box_scores`` of the judged row's box
  (pixel coordinates: cleanlab does not normalize), every row of the image as labels and the
  predicted box as one class-agnostic box (the box head does not depend on the class);
- ``overlooked``: ``compute_overlooked_box_scores`` of the predicted box, given to each class
  with that class's probability: an object the
  model is sure of that no row covers (a missing box). It is an image-level suspect.

Each score is divided by its pool median (one kind would drown the others ranked raw); a
row's score is its lowest, ``kind`` names which, and the raw scores are kept alongside.
Ranking and cutting the list finds more than cleanlab's boolean ``find_label_issues``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from pipeline.data.boxes import clip_and_order, iou
from pipeline.data.contract import BOX_COLUMNS
from pipeline.evaluation.coco import Detections

MATCH_IOU = 0.5
KINDS = ("class", "box", "overlooked")
SUGGEST_COLUMNS = [f"suggest_{c}" for c in BOX_COLUMNS]


def _pixels(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Normalized (x_min, x_max, y_min, y_max) rows → cleanlab's pixel (x1, y1, x2, y2)."""
    boxes = np.asarray(boxes, dtype="float64").reshape(-1, 4)
    return np.stack(
        [boxes[:, 0] * width, boxes[:, 2] * height, boxes[:, 1] * width, boxes[:, 3] * height],
        axis=1,
    )


def judged_rows(rows: pd.DataFrame, targets: pd.Series, pred_box: np.ndarray) -> int:
    """Index (into ``rows``) of the row the image's prediction speaks for."""
    overlap = iou(rows[BOX_COLUMNS].to_numpy(float), np.repeat(pred_box[None], len(rows), 0))
    best = int(np.argmax(overlap))
    if overlap[best] >= MATCH_IOU:
        return best
    return int(np.flatnonzero(targets.to_numpy())[0]) if targets.any() else best


def score_rows(
    rows: pd.DataFrame,
    images: pd.DataFrame,
    probs: np.ndarray,
    pred_boxes: np.ndarray,
    classes: list[str],
    detections: list[Detections] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every row and every image; return (rows with scores, image-level suspects).

    Long because cleanlab's inputs, its three scores and their assembly share per-image state.

    ``rows``: annotation rows (split, folder, image_id, class_name, boxes, ``row``: the data-row
    index in its split's CSV, ``target``: the row the model is trained to find).
    ``images``: one per image (split, folder, image_id, width, height), in the order of
    ``probs`` (N × classes) and ``pred_boxes`` (N × 4, normalized); ``detections``: a
    detector's lists in that order too (``coco.model_detections``).
    """
    from cleanlab.object_detection import rank as od_rank
    from cleanlab.rank import get_label_quality_scores

    index = {name: i for i, name in enumerate(classes)}
    pred_boxes = clip_and_order(pred_boxes)
    groups = rows.groupby(["split", "folder", "image_id"], sort=False).indices
    labels, labels_norm, predictions, judged, kept = [], [], [], [], []
    for i, image in enumerate(images.itertuples()):
        where = groups.get((image.split, image.folder, image.image_id))
        if where is None or len(where) == 0:  # no rows: cleanlab cannot score such an image
            continue
        mine = rows.iloc[where]
        size = (image.width, image.height)
        labels_norm.append(mine[BOX_COLUMNS].to_numpy(float))
        labels.append(
            {
                "bboxes": _pixels(labels_norm[-1], *size),
                "labels": mine.class_name.map(index).to_numpy("int64"),
            }
        )
        box = _pixels(pred_boxes[i], *size)[0]
        predictions.append(
            np.array([np.array([[*box, p]], dtype="float64") for p in probs[i]], dtype=object)
        )
        judged.append((i, where, judged_rows(mine, mine.target, pred_boxes[i])))
        kept.append(i)

    scored = rows.assign(score=np.nan, kind="not_judged", class_score=np.nan, box_score=np.nan)
    scored["suggest_class"] = ""
    for column in SUGGEST_COLUMNS:
        scored[column] = np.nan
    if not kept:
        return scored, pd.DataFrame()
    with warnings.catch_warnings():  # cleanlab warns about pools it finds small
        warnings.simplefilter("ignore")
        # The box head is class-agnostic: its box is judged against every row's box whatever
        # the class (else a row whose class the model doubts would escape the box check).
        agnostic = [{**lab, "labels": np.zeros_like(lab["labels"])} for lab in labels]
        boxes_only = [
            np.array([np.array([[*p[0][0, :4], 1.0]])], dtype=object) for p in predictions
        ]
        badloc = od_rank.compute_badloc_box_scores(labels=agnostic, predictions=boxes_only)
        overlooked = od_rank.compute_overlooked_box_scores(labels=labels, predictions=predictions)
        given = np.array([labels[n]["labels"][j] for n, (_, _, j) in enumerate(judged)])
        class_scores = get_label_quality_scores(given, probs[kept])

    box_scores = []
    for n, (i, _, j) in enumerate(judged):
        value, overlap = float(badloc[n][j]), float(iou(labels_norm[n][j], pred_boxes[i]))
        # cleanlab scores a box no prediction overlaps as 1.0 (or NaN): not "badly located" to
        # it, yet the box is on nothing the model sees there (a distractor, a far shift).
        if np.isnan(value) or overlap == 0.0:
            value = overlap
        box_scores.append(value)
    lost = [float(np.nanmin(o)) if len(o) and not np.isnan(o).all() else 1.0 for o in overlooked]
    # Each score relative to its pool median: a class score of 0.5 is ordinary for a model
    # unsure of classes, a box score of 0.5 is not; ranked raw, one kind would drown the other.
    class_rel, box_rel, lost_rel = (
        np.asarray(v, dtype="float64") / max(float(np.median(v)), 1e-9)
        for v in (class_scores, box_scores, lost)
    )
    if detections is not None:
        secondary = [(i, np.delete(where, j)) for i, where, j in judged if len(where) > 1]
        score_secondary(scored, secondary, detections, classes)
    image_rows = []
    for n, (i, where, j) in enumerate(judged):
        at = scored.index[where[j]]
        scored.loc[at, ["class_score", "box_score"]] = float(class_scores[n]), box_scores[n]
        kind = "class" if class_rel[n] <= box_rel[n] else "box"
        scored.loc[at, ["score", "kind"]] = float(min(class_rel[n], box_rel[n])), kind
        scored.loc[at, "suggest_class"] = classes[int(np.argmax(probs[i]))]
        scored.loc[at, SUGGEST_COLUMNS] = pred_boxes[i]
        image = images.iloc[i]
        image_rows.append(
            {
                "split": image.split,
                "folder": image.folder,
                "image_id": image.image_id,
                "row": -1,  # no row: the box that is missing
                "class_name": "",
                **dict.fromkeys(BOX_COLUMNS, np.nan),
                "score": float(lost_rel[n]),
                "kind": "overlooked",
                "suggest_class": classes[int(np.argmax(probs[i]))],
                **dict(zip(SUGGEST_COLUMNS, pred_boxes[i], strict=True)),
            }
        )
    return scored, pd.DataFrame(image_rows)


def score_secondary(
    scored: pd.DataFrame,
    secondary: list[tuple[int, np.ndarray]],
    detections: list[Detections],
    classes: list[str],
) -> None:
    """Judge the class of the rows the one-box answer does not speak for from a detector's
    list, in place. ``secondary``: (image index, positions in ``scored`` of its other rows).

    A row's class distribution is each class's best score among the detections on it (IoU ≥
    ``MATCH_IOU``), normalized to sum 1; its score is ``get_label_quality_scores`` of the
    given class under it, divided by the median of these rows' own scores (detection scores
    are calibrated otherwise than the one-box answer's probabilities). A row no detection is
    on stays ``not_judged``. Their boxes are not judged: measured, the list's boxes of
    secondary objects flagged more right rows than wrong ones (docs/review.md).
    """
    from cleanlab.rank import get_label_quality_scores

    index = {name: i for i, name in enumerate(classes)}
    positions, dists, suggested = [], [], []
    for i, where in secondary:
        boxes, scores, kinds = detections[i]
        given = scored.iloc[where][BOX_COLUMNS].to_numpy(float)
        for k, at in enumerate(where):
            overlap = iou(np.repeat(given[k][None], len(boxes), 0), boxes)
            on = overlap >= MATCH_IOU
            if on.any():
                dist = np.zeros(len(classes))
                np.maximum.at(dist, kinds[on], scores[on])
                positions.append(at)
                dists.append(dist / dist.sum())
                suggested.append(boxes[np.argmax(overlap)])
    if not positions:
        return
    given_classes = scored.class_name.iloc[positions].map(index).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = get_label_quality_scores(given_classes, np.array(dists))
    median = max(float(np.median(values)), 1e-9)
    rows = scored.index[positions]
    scored.loc[rows, "class_score"] = values
    scored.loc[rows, "score"] = values / median
    scored.loc[rows, "kind"] = "class"
    scored.loc[rows, "suggest_class"] = [classes[int(np.argmax(d))] for d in dists]
    scored.loc[rows, SUGGEST_COLUMNS] = np.array(suggested)


def rank(scored: pd.DataFrame, image_suspects: pd.DataFrame) -> pd.DataFrame:
    """One ranked table: judged rows and image-level suspects by score, not-judged rows last.

    An image's overlooked entry is dropped when its judged row already ranks it (same image,
    lower score): one suspect per mistake, not two.
    """
    columns = [
        "split",
        "folder",
        "image_id",
        "row",
        "class_name",
        *BOX_COLUMNS,
        "kind",
        "score",
        "suggest_class",
        *SUGGEST_COLUMNS,
    ]
    judged = scored[scored.kind != "not_judged"]
    keys = ["split", "folder", "image_id"]
    if not image_suspects.empty:
        best = judged.groupby(keys).score.min().rename("row_score").reset_index()
        merged = image_suspects.merge(best, on=keys, how="left")
        image_suspects = merged[~(merged.row_score <= merged.score)].drop(columns="row_score")
    parts = [judged[columns], image_suspects.reindex(columns=columns)]
    ranked = pd.concat([p for p in parts if not p.empty], ignore_index=True)
    ranked = ranked.sort_values(["score", "split", "image_id", "row"], kind="stable")
    rest = scored[scored.kind == "not_judged"][columns]
    table = pd.concat([ranked, rest], ignore_index=True) if not rest.empty else ranked
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)


def found_in_top(ranked: pd.DataFrame, entries: list[dict], cut: int) -> list[bool]:
    """For each manifest entry, whether the top ``cut`` suspects point at it.

    A row-level entry is found when its row is in the cut; a ``missing_box`` (no row left) when
    any suspect of its image is.
    """
    top = ranked.head(cut)
    rows = set(zip(top.split, top.row.astype(int), strict=True))
    images = set(zip(top.split, top.image_id, strict=True))
    return [
        (e["split"], e["image_id"]) in images
        if e["row"] is None
        else (e["split"], int(e["row"])) in rows
        for e in entries
    ]


def recall_by_kind(ranked: pd.DataFrame, defects: list[dict], cut: int) -> dict[str, dict]:
    """Share of injected label-noise entries of each kind found in the top ``cut`` suspects
    (``found_in_top``)."""
    noise = [entry for entry in defects if entry.get("expect") == "review"]
    found: dict[str, list[bool]] = {}
    for entry, hit in zip(noise, found_in_top(ranked, noise, cut), strict=True):
        found.setdefault(entry["kind"], []).append(hit)
    return {
        kind: {"injected": len(hits), "found": int(sum(hits)), "recall": sum(hits) / len(hits)}
        for kind, hits in found.items()
    }


def precision_at(ranked: pd.DataFrame, defects: list[dict], cut: int) -> float:
    """Share of the top ``cut`` suspects that point at an injected label-noise entry."""
    noise = [e for e in defects if e.get("expect") == "review"]
    noisy_rows = {(e["split"], e["row"]) for e in noise if e["row"] is not None}
    missing = {(e["split"], e["image_id"]) for e in noise if e["row"] is None}
    top = ranked.head(cut)
    hits = [
        (s, int(r)) in noisy_rows or (s, i) in missing
        for s, r, i in zip(top.split, top.row, top.image_id, strict=True)
    ]
    return float(np.mean(hits)) if hits else 0.0
