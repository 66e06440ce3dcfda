"""`snackloc review export`: the review's top suspects for a labeling tool.

Label Studio tasks with the model's suggestion as a prediction, or CVAT for images 1.1 XML
with the suggestion as a box of its own; the row ids are kept for ``review apply``
(pipeline/data/formats/labelstudio.py and cvat.py write and read both). Reads what the
review stage wrote (outputs/review/review.csv) and the dataset, and never imports the model:
an export starts in a second or two.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from PIL import Image

from pipeline.core.config import Params, load_params
from pipeline.core.errors import UserError
from pipeline.core.files import read_json, write_json, write_text
from pipeline.core.paths import Outputs
from pipeline.data.contract import BOX_COLUMNS, image_path, read_clean_annotations
from pipeline.data.formats import cvat, labelstudio

# `snackloc review export --format` names, as users spell them, and the format each means
EXPORT_FORMATS = {"label-studio": "label-studio", "labelstudio": "label-studio", "cvat": "cvat"}


def export_review(
    params: Params | Path,
    outputs: Outputs | Path,
    out: Path,
    top: int,
    fmt: str = "label-studio",
    url_prefix: str = "/data/local-files/?d=",
) -> str:
    """Write the ``top`` most suspect images for a labeling tool; return a one-line summary.
    ``params`` and ``outputs`` may be given as the params file and the outputs folder.

    ``label-studio``: tasks (``out``/tasks.json) and their labeling config
    (``out``/label_config.xml); each task's image URL is ``url_prefix`` +
    ``<split>/<folder>/<image_id>.jpg`` (with Label Studio's local files storage rooted at
    the data folder, the default finds them). ``cvat``: CVAT for images 1.1
    (``out``/annotations.xml), the labels for CVAT's label constructor (``out``/labels.json),
    each image's row ids (``out``/rows.json, for ``review apply``) and the images under
    ``out``/images/ by the names the XML gives them.
    """

    params = params if isinstance(params, Params) else load_params(params)
    outputs = outputs if isinstance(outputs, Outputs) else Outputs(outputs)
    kind = EXPORT_FORMATS.get(fmt.strip().lower().replace("_", "-"))
    if kind is None:
        raise UserError(f"unknown review export format {fmt!r}", hint="label-studio or cvat")
    suspects, rows_of, sizes = _suspects_to_export(params, outputs, top)
    classes = read_json(outputs.classes)["classes"]
    out.mkdir(parents=True, exist_ok=True)
    if kind == "cvat":
        write_text(
            out / "annotations.xml", cvat.review_annotations(suspects, rows_of, sizes, classes)
        )
        write_json(out / "labels.json", cvat.review_labels(classes))
        write_json(out / "rows.json", cvat.review_row_ids(rows_of, list(sizes)))
        for key in sizes:
            target = out / "images" / key[0] / key[1] / f"{key[2]}.jpg"  # its name in the XML
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image_path(params.data.root, *key), target)
        where = f"{out}: annotations.xml, labels.json, rows.json, images/"
        return f"{len(sizes)} images ({len(suspects)} suspects) as CVAT for images 1.1 in {where}"
    tasks = labelstudio.review_tasks(suspects, rows_of, sizes, url_prefix)
    write_json(out / "tasks.json", tasks)
    write_text(out / "label_config.xml", labelstudio.label_config(classes))
    return f"{len(tasks)} Label Studio tasks ({len(suspects)} suspects) in {out}"


def _suspects_to_export(params: Params, outputs: Outputs, top: int) -> tuple[list, dict, dict]:
    """The ``top`` suspects (review.csv records), the rows of each of their images by (split,
    folder, image_id), and each image's (width, height)."""
    if not outputs.review_table.is_file():
        raise UserError(f"{outputs.review_table} does not exist", hint="run `snackloc review`")
    ranked = pd.read_csv(outputs.review_table, dtype={"image_id": str, "folder": str})
    suspects = ranked[ranked.kind != "not_judged"].head(top)
    keys = ["split", "folder", "image_id"]
    rows = pd.concat(
        [
            read_clean_annotations(outputs.deduped(split)).assign(split=split)
            for split in sorted(set(suspects.split))
        ]
        or [pd.DataFrame(columns=[*keys, "row", "class_name", *BOX_COLUMNS])],
        ignore_index=True,
    )
    rows_of = {key: group.to_dict("records") for key, group in rows.groupby(keys)}
    sizes = {}
    for key in dict.fromkeys(map(tuple, suspects[keys].to_numpy())):
        with Image.open(image_path(params.data.root, *key)) as image:
            sizes[key] = image.size
    return suspects.to_dict("records"), rows_of, sizes
