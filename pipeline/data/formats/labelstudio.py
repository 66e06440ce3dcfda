"""Label Studio JSON: review tasks out (with pre-annotations), corrected exports back in.

The format (labelstud.io/guide/task_format, /guide/predictions): a JSON list of tasks, each
``{"data": {"image": URL, ...}, "annotations": [...], "predictions": [...]}``; an annotation
or prediction holds ``result``, a list of regions. A box is a region of ``type:
"rectanglelabels"`` whose ``value`` has ``x``, ``y`` (top-left corner), ``width``, ``height``
in percent of the image (0-100), ``rotation`` (degrees) and ``rectanglelabels`` (the class);
``original_width``/``original_height`` give the image size in pixels.

Reading a corrected export: a task's boxes are those of its last annotation that was not
cancelled; a task nobody annotated is skipped (reported), as are rotated boxes. The image is
found by the task's ``snackloc_image`` (written by ``review_tasks``), else by the file name
of ``data.image`` (Label Studio prefixes uploads with 8 hex digits and a dash, tried too).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote, unquote

from globox import BoundingBox, BoxFormat

from pipeline.data.formats.base import (
    READ_ERRORS,
    Entry,
    ReadContext,
    box_item,
    describe,
    first_item,
    load_json,
    sniff_json,
)
from pipeline.data.formats.images import url_file_name

FROM_NAME, TO_NAME = "label", "image"  # the names in LABEL_CONFIG
UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
# The labeling config the exported tasks are meant for (one RectangleLabels over the image).
LABEL_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="label" toName="image">
{labels}
  </RectangleLabels>
</View>
"""


def is_labelstudio(content: Any) -> bool:
    """A JSON list whose first element is a task: ``data`` and annotations or predictions."""
    item = first_item(content)
    return (
        isinstance(item, dict)
        and isinstance(item.get("data"), dict)
        and any(key in item for key in ("annotations", "predictions", "completions"))
    )


def sniff_labelstudio(path) -> bool:
    """A JSON list of Label Studio tasks."""
    return is_labelstudio(sniff_json(path))


def _names(data: dict[str, Any]) -> list[str]:
    """The names the task's image goes by, most specific first."""
    url = str(data.get("image") or "")
    found = [str(data.get("snackloc_image") or "")]
    local = re.search(r"[?&]d=([^&#]+)", url)  # local files storage: /data/local-files/?d=path
    if local:
        found.append(unquote(local.group(1)))
    name = url_file_name(url) or (url if "/" not in url else "")
    found += [name, UPLOAD_PREFIX.sub("", name)]
    return [n for n in dict.fromkeys(found) if n]


def _chosen_result(task: dict[str, Any]) -> list[Any] | None:
    """The regions of the task's last annotation that was not cancelled (None: none)."""
    annotations = task.get("annotations") or task.get("completions") or []
    kept = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
    return kept[-1].get("result") or [] if kept else None


def read_labelstudio(path, ctx: ReadContext) -> list[Entry]:
    """A Label Studio JSON export: one entry per annotated task, boxes normalized."""
    content = load_json(path)
    if not is_labelstudio(content):
        raise ValueError("not a Label Studio export (expected a list of tasks with data)")
    entries = []
    for index, task in enumerate(content):
        names = _names(task.get("data") or {}) if isinstance(task, dict) else []
        if not names:
            ctx.report(path, f"[{index}]", "bad_task", "skipped image", "no image in data")
            continue
        result = _chosen_result(task)
        if result is None:
            detail = "no annotation (only predictions, or every annotation cancelled)"
            ctx.report(path, names[0], "not_annotated", "skipped image", detail)
            continue
        entry = Entry(names[0], path, normalized=True, aliases=tuple(names[1:]))
        for number, region in enumerate(result):
            if not isinstance(region, dict) or region.get("type") != "rectanglelabels":
                continue  # other control tags (choices, text) carry no box
            item = box_item(entry.name, number)
            try:
                value = region["value"]
                if float(value.get("rotation") or 0) % 360:
                    detail = f"rotated by {value['rotation']} degrees: not an upright box"
                    ctx.report(path, item, "rotated_box", "skipped box", detail)
                    continue
                coords = tuple(float(value[k]) / 100 for k in ("x", "y", "width", "height"))
                label = value["rectanglelabels"][0]
                box = BoundingBox.create(label=str(label), coords=coords, box_format=BoxFormat.LTWH)
                entry.boxes.append(box)
            except (*READ_ERRORS, IndexError, TypeError) as exc:
                ctx.report(path, item, "bad_box", "skipped box", describe(exc))
        entries.append(entry)
    return entries


def box_region(box: tuple[float, float, float, float], label: str, size: tuple[int, int], **extra):
    """One rectanglelabels region of a normalized (x_min, x_max, y_min, y_max) box."""
    x_min, x_max, y_min, y_max = box
    return {
        "type": "rectanglelabels",
        "from_name": FROM_NAME,
        "to_name": TO_NAME,
        "original_width": int(size[0]),
        "original_height": int(size[1]),
        "image_rotation": 0,
        "value": {
            "x": 100 * x_min,
            "y": 100 * y_min,
            "width": 100 * (x_max - x_min),
            "height": 100 * (y_max - y_min),
            "rotation": 0,
            "rectanglelabels": [label],
        },
        **extra,
    }


def review_tasks(
    suspects: list[dict[str, Any]],
    rows_of_image: dict[tuple[str, str, str], list[dict[str, Any]]],
    sizes: dict[tuple[str, str, str], tuple[int, int]],
    url_prefix: str,
) -> list[dict[str, Any]]:
    """One task per suspect image: its current rows as the annotation to correct, and the
    model's suggestion as a prediction (pre-annotation), with the row ids kept in ``data``.
    The image URL is ``url_prefix`` + ``split/folder/id.jpg`` percent-encoded (``ice
    cream`` -> ``ice%20cream``), as Label Studio's local files storage writes its URLs.
    Long because it spells out Label Studio's task layout in one place.

    ``suspects``: review.csv records (split, folder, image_id, row, kind, score,
    suggest_class, suggest_*), most suspect first; an image is exported once. The
    prediction's score is the suspect score clipped to [0, 1], the range Label Studio
    accepts (a score is relative to its pool's median, so it can exceed 1); ``data.score``
    keeps it as ranked.
    """
    tasks, seen = [], set()
    for suspect in suspects:
        key = (suspect["split"], suspect["folder"], suspect["image_id"])
        if key in seen:
            continue
        seen.add(key)
        relative = PurePosixPath(*key).as_posix() + ".jpg"
        rows = rows_of_image.get(key, [])
        size = sizes[key]
        given = [
            box_region(
                (r["x_min"], r["x_max"], r["y_min"], r["y_max"]),
                r["class_name"],
                size,
                id=f"row{int(r['row'])}",
            )
            for r in rows
        ]
        suggested = (
            suspect["suggest_x_min"],
            suspect["suggest_x_max"],
            suspect["suggest_y_min"],
            suspect["suggest_y_max"],
        )
        tasks.append(
            {
                "data": {
                    "image": url_prefix + quote(relative),
                    "snackloc_image": relative,
                    "split": key[0],
                    "rows": [int(r["row"]) for r in rows],
                    "suspect_row": int(suspect["row"]),
                    "suspect_kind": str(suspect["kind"]),
                    "score": float(suspect["score"]),
                },
                "annotations": [{"result": given}] if given else [],
                "predictions": [
                    {
                        "model_version": "snackloc-review",
                        "score": min(1.0, max(0.0, float(suspect["score"]))),
                        "result": [box_region(suggested, str(suspect["suggest_class"]), size)],
                    }
                ],
            }
        )
    return tasks


def label_config(classes: list[str]) -> str:
    """The Label Studio labeling config for the exported tasks."""
    return LABEL_CONFIG.format(labels="\n".join(f'    <Label value="{c}"/>' for c in classes))


def _corrected_rows(task: dict[str, Any], key: tuple[str, str, str]) -> list[list[str]] | str:
    """The CSV rows of a corrected task's last annotation, or why it cannot be used."""
    result = _chosen_result(task)
    if result is None:
        return "not annotated (only predictions, or every annotation cancelled)"
    rows = []
    for region in result:
        if not isinstance(region, dict) or region.get("type") != "rectanglelabels":
            continue
        try:
            value = region["value"]
            if float(value.get("rotation") or 0) % 360:
                return f"a box rotated by {value['rotation']} degrees"
            x, y = float(value["x"]) / 100, float(value["y"]) / 100
            w, h = float(value["width"]) / 100, float(value["height"]) / 100
            box = [min(1.0, max(0.0, v)) for v in (x, x + w, y, y + h)]
            label = str(value["rectanglelabels"][0])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            return f"a box that cannot be read ({describe(exc)})"
        rows.append([key[2], *(f"{v:.6f}" for v in box), label, key[1]])
    return rows


def apply_export(data_root, export_path) -> dict[str, Any]:
    """Write the corrections of a Label Studio export of ``review_tasks`` into the dataset
    (``apply_tasks``); a UserError naming the file when it is not such an export."""
    from pathlib import Path

    from pipeline.core.errors import UserError

    try:
        tasks = load_json(Path(export_path))
    except (OSError, ValueError) as exc:
        raise UserError(f"{export_path}: cannot be read ({describe(exc)})") from None
    if not is_labelstudio(tasks):
        raise UserError(f"{export_path}: not a Label Studio export (a list of tasks)")
    return apply_tasks(data_root, tasks)


def apply_tasks(data_root, tasks: list[Any]) -> dict[str, Any]:
    """Write the corrected tasks (as ``review_tasks`` wrote them, annotated) into the dataset.

    Each task's image keeps its place in its split's CSV; its rows (``data.rows``, checked to
    be still the rows of that image) are replaced by the task's last annotation, so an image
    a reviewer left unchanged gets the same rows back and every other line stays
    byte-identical. Tasks that cannot be applied are listed in ``skipped`` with the reason.
    Long because each skip has its own check and reason, read in order.
    Returns ``{"applied": n, "rows_before": n, "rows_after": n, "skipped": [...]}``.
    """
    import csv
    from pathlib import Path

    from pipeline.core.files import write_text

    root = Path(data_root)
    tables: dict[str, list[list[str]]] = {}
    summary: dict[str, Any] = {"applied": 0, "rows_before": 0, "rows_after": 0, "skipped": []}
    for number, task in enumerate(tasks):
        data = task.get("data") or {} if isinstance(task, dict) else {}
        where = str(data.get("snackloc_image") or "")
        parts = PurePosixPath(where).parts
        if len(parts) != 3 or parts[0] not in ("train", "val", "test"):
            summary["skipped"].append(f"task {number}: not a snackloc review task")
            continue
        key = (parts[0], parts[1], PurePosixPath(parts[2]).stem)
        if key[0] not in tables:
            with annotations_csv(root, key[0]).open(encoding="utf-8", newline="") as handle:
                tables[key[0]] = list(csv.reader(handle))
        table = tables[key[0]]
        mine = [i - 1 for i, cells in enumerate(table) if i and cells[:1] == [key[2]]]
        mine = [i for i in mine if table[i + 1][6:7] == [key[1]]]
        if mine != sorted(int(r) for r in data.get("rows") or []):
            summary["skipped"].append(f"{where}: its rows changed since the export")
            continue
        new = _corrected_rows(task, key)
        if isinstance(new, str):
            summary["skipped"].append(f"{where}: {new}")
            continue
        at = mine[0] + 1 if mine else len(table)
        for i in reversed(mine):
            del table[i + 1]
        table[at:at] = new
        summary["applied"] += 1
        summary["rows_before"] += len(mine)
        summary["rows_after"] += len(new)
    for split, table in tables.items():
        lines = "".join(",".join(_quote(c) for c in cells) + "\n" for cells in table)
        write_text(annotations_csv(root, split), lines)
    return summary


def annotations_csv(root, split: str):
    """A split's annotation CSV; a UserError naming it when it is missing."""
    from pipeline.core.errors import UserError
    from pipeline.data.contract import annotations_path

    path = annotations_path(root, split)
    if not path.is_file():
        raise UserError(f"{path} does not exist: is --data the dataset that was reviewed?")
    return path


def _quote(cell: str) -> str:
    """A CSV cell as the csv module would write it (quoted only when it must be)."""
    return f'"{cell.replace(chr(34), chr(34) * 2)}"' if any(c in cell for c in ',"\n\r') else cell
