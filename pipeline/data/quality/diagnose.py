"""What a whole annotation file looks like when most of its rows fail for one reason.

The validate stage quarantines each bad row with its reasons; when the rows of one file fail
together, a count per check ("out_of_range (7040)") does not tell the user what happened.
``whole_file`` looks at the file the way a person would and names the mistake and its fix:
boxes in pixels, another column order (Pascal VOC, COCO, YOLO), images not in one folder per
class or with another extension, image ids carrying their extension, class names in other
letter case, the user's own class names with the default snacks list, an empty column.
``unused_classes`` is the warning for a class list larger than the train split.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.contract import BOX_COLUMNS, IMAGE_SUFFIXES, SPLITS

MOST = 0.5  # a mistake "of the whole file" explains more than this share of its rows
MIN_ROWS = 3  # ... and at least this many (one odd row is no pattern)
ORDER_VALID = 0.9  # another column order must make at least this share of the boxes valid
ORDER_FAILING = 0.25  # ... where the contract order leaves at least this share inverted
# A file in another order can leave few rows inverted (x, y, width, height in the four box
# columns: 13 % of a real set) and the rest valid but wrong: named all the same when the
# other reading makes nearly every box valid and more of them than the contract order.
ORDER_FEW_FAILING = 0.03
ORDER_ALL_VALID = 0.98
NAMES_SHOWN = 5

# (split, row) -> {check: [details]}: the validate stage's findings.
Failed = Mapping[tuple[str, int], Mapping[str, list[str]]]
# What a detector found: (rows it explains, what they look like, the fix[, every row is
# wrong: a box order mistake leaves the rows validate cannot see as wrong in training]).
Found = tuple[int, str, str] | tuple[int, str, str, bool]


@dataclass(frozen=True)
class Diagnosis:
    """The mistake of a whole file: what it looks like and how to fix it."""

    split: str
    message: str
    hint: str
    every_row: bool = False  # the rows that passed are wrong too: fail, whatever their share


def _most(rows: int, count: int) -> bool:
    """True when ``rows`` of a file's ``count`` rows are "most of the file"."""
    return rows >= MIN_ROWS and rows > MOST * count


def class_list_name(setting: object) -> str:
    """How an error names the class list of ``data.classes``."""
    if setting == "snacks":
        return "data.classes (the book's 20 snacks)"
    if setting == "auto":
        return "the class list (data.classes: auto: the class names of the clean train rows)"
    return "data.classes"


def _names(values: pd.Series) -> str:
    """Distinct values, most frequent first, at most NAMES_SHOWN of them."""
    counts = Counter(str(value) for value in values.dropna())
    shown = [name for name, _ in counts.most_common(NAMES_SHOWN)]
    more = len(counts) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _boxes(table: pd.DataFrame) -> np.ndarray:
    """The four parsed coordinates per row, in the CSV's column order (NaN where not a number)."""
    return table[[f"{column}_value" for column in BOX_COLUMNS]].to_numpy(dtype="float64")


def _valid(x_min, x_max, y_min, y_max) -> np.ndarray:
    """Rows whose box, read one way, lies in [0, 1] with a positive size."""
    inside = (x_min >= 0) & (y_min >= 0) & (x_max <= 1) & (y_max <= 1)
    return inside & (x_min < x_max) & (y_min < y_max)


# Other ways the four numbers of a row are written, from the columns x_min,x_max,y_min,y_max.
ORDERS = {
    "voc": (
        lambda a, b, c, d: _valid(a, c, b, d),
        "x_min, y_min, x_max, y_max (Pascal VOC order)",
        "swap the x_max and y_min names in the header line (columns are read by name), "
        "or swap the two columns' values",
    ),
    "coco": (
        lambda a, b, c, d: _valid(a, a + c, b, b + d),
        "x_min, y_min, width and height (COCO order)",
        "compute x_max = x_min + width and y_max = y_min + height, and write the columns "
        "x_min,x_max,y_min,y_max",
    ),
    "yolo": (
        lambda a, b, c, d: _valid(a - c / 2, a + c / 2, b - d / 2, b + d / 2),
        "x_center, y_center, width and height (YOLO order)",
        "compute x_min = x_center - width/2, x_max = x_center + width/2 (y likewise), or "
        "import the YOLO labels with `snackloc data import --format yolo`",
    ),
}


def _pixels(table: pd.DataFrame, count: int) -> Found | None:
    values = _boxes(table)
    above = np.nan_to_num(values, nan=0.0) > 1
    rows = int(above.any(axis=1).sum())
    if not _most(rows, count):
        return None
    return (
        rows,
        f"have coordinates above 1 (up to {np.nanmax(values):g}): they "
        "look like pixels, and boxes must be normalized to [0, 1]",
        "divide x_min and x_max by the image's width and y_min and y_max by its height "
        "(`snackloc data import` does it for VOC, COCO, YOLO and other tools' files)",
    )


def _order(table: pd.DataFrame, count: int, inverted: int) -> Found | None:
    if inverted < max(MIN_ROWS, ORDER_FEW_FAILING * count):
        return None
    a, b, c, d = _boxes(table).T
    numeric = int(np.isfinite(_boxes(table)).all(axis=1).sum())
    valid = {name: int(rule(a, b, c, d).sum()) for name, (rule, _, _) in ORDERS.items()}
    best = max(valid, key=lambda name: valid[name])  # ties: the first of ORDERS
    if not numeric or valid[best] < ORDER_VALID * numeric:
        return None
    if inverted < ORDER_FAILING * count:  # few inverted: the other reading must explain all
        as_written = int(_valid(a, b, c, d).sum())
        if valid[best] < ORDER_ALL_VALID * numeric or valid[best] <= as_written:
            return None
    _, looks_like, fix = ORDERS[best]
    return (
        inverted,
        f"have x_min >= x_max or y_min >= y_max, and "
        f"{valid[best]} of {numeric} boxes are valid read as {looks_like}: the other rows "
        "are read as wrong boxes",
        fix,
        True,
    )


def _image_index(root: Path) -> dict[str, list[Path]]:
    """Every image file under the data root by its stem."""
    index: dict[str, list[Path]] = {}
    for path in sorted(Path(root).rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            index.setdefault(path.stem, []).append(path)
    return index


def _missing_images(
    root: Path, split: str, table: pd.DataFrame, missing: list[int], count: int
) -> Found | None:
    """Why most rows name a missing image: an extension in image_id, another suffix, or
    images outside ``<split>/<folder>/``; None when no one cause explains most.

    Long because it tries the causes in turn, the most specific first.
    """
    if not _most(len(missing), count):
        return None
    rows = table[table["row"].isin(missing)].dropna(subset=["image_id", "folder"])
    lead = "name an image that does not exist"
    ids = rows["image_id"].astype(str)
    with_suffix = ids.map(lambda name: Path(name).suffix.lower() in IMAGE_SUFFIXES)
    if with_suffix.sum() >= MOST * len(missing):
        example = ids[with_suffix].iloc[0]
        return (
            len(missing),
            f"{lead}: their image_id ends in a file extension ({example!r} is looked for "
            f"as {example}.jpg)",
            "write image_id without the extension",
        )
    split_dir = Path(root) / split
    index = _image_index(root)
    found = [  # (the row's folder, the file of its image_id, one under split_dir first)
        (folder, min(paths, key=lambda path: split_dir not in path.parents))
        for folder, image_id in rows[["folder", "image_id"]].itertuples(index=False)
        if (paths := index.get(str(image_id)))
    ]
    if len(found) < MOST * len(missing):
        if not split_dir.is_dir():
            return (
                len(missing),
                f"{lead}: {split_dir} does not exist",
                f"put the images in {split_dir}/<folder>/<image_id>.jpg",
            )
        return None
    suffixes = Counter(path.suffix for folder, path in found if path.parent.name == folder)
    if suffixes and sum(suffixes.values()) >= MOST * len(found):
        suffix = suffixes.most_common(1)[0][0]
        return (
            len(found),
            f"{lead}: the images are named <image_id>{suffix}, not <image_id>.jpg",
            "rename each image to <image_id>.jpg (the loader reads PNG and other formats "
            "named .jpg), or import the folder with `snackloc data import`",
        )
    bases = Counter(
        path.parent.parent if path.parent.name == folder else path.parent for folder, path in found
    )
    base, _ = bases.most_common(1)[0]
    if base == split_dir or not any(path.parent.name == folder for folder, path in found):
        where = " itself" if base == split_dir else ""
        folder, path = found[0]
        return (
            len(found),
            f"{lead}: the images are in {base}{where}, not in one folder per class",
            f"move each image into {split_dir}/<folder>/, the folder column of its row "
            f"(e.g. {path.name} to {split_dir / folder / path.name})",
        )
    return (
        len(found),
        f"{lead}: the images are in {base}/<folder>/, not in {split_dir}/<folder>/",
        f"move or rename {base} to {split_dir}",
    )


def _normalized(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name.strip()).casefold()


def _unknown_classes(
    table: pd.DataFrame, unknown: list[int], count: int, classes: list[str], setting: object
) -> Found | None:
    if not _most(len(unknown), count):
        return None
    names = table.loc[table["row"].isin(unknown), "class_name"].dropna().astype(str)
    known = {_normalized(name): name for name in classes}
    close = names[names.map(_normalized).isin(known)]
    listed = class_list_name(setting)
    if len(close) >= MOST * len(unknown):
        example = close.iloc[0]
        return (
            len(close),
            f"have a class_name that is in {listed} in other "
            f"letter case or spelling ({example!r} for {known[_normalized(example)]!r})",
            "write class_name (and folder) as the class list does, or set "
            "`data.classes: auto` to use the names as they are",
        )
    lead = f"have a class_name that is not in {listed}"
    if setting == "snacks":
        hint = (
            "set `data.classes: auto` in params.yaml to train on the class names of the train "
            "split (or list them: data.classes: [a, b, ...])"
        )
    elif setting == "auto":
        hint = "every class needs train rows: move some of its images to train, or fix the names"
    else:
        hint = "add them to data.classes in params.yaml, or set `data.classes: auto`"
    return len(unknown), f"{lead}: {_names(names)}", hint


def _empty_column(table: pd.DataFrame, count: int) -> Found | None:
    empty = table[["image_id", "class_name", "folder", *BOX_COLUMNS]].isna().sum()
    column = str(empty.idxmax())
    if not _most(int(empty[column]), count):
        return None
    fill = {"folder": "the class folder its image sits in (often its class_name)"}
    return (
        int(empty[column]),
        f"have an empty {column}",
        f"fill in {column}" + (f": {fill[column]}" if column in fill else ""),
    )


def diagnose_split(
    root: Path, split: str, table: pd.DataFrame, failed: Failed, classes: list[str] | None,
    setting: object,
) -> Found | None:  # fmt: skip
    """What one mistake that explains most rows of the split's file found, if any."""
    count = len(table)
    if not count:
        return None
    rows: dict[str, list[int]] = {}
    for (where, row), checks in failed.items():
        for check in checks if where == split else ():
            rows.setdefault(check, []).append(row)
    found = _empty_column(table, count) or _pixels(table, count)
    found = found or _order(table, count, len(rows.get("inverted_box", [])))
    found = found or _missing_images(root, split, table, rows.get("missing_image", []), count)
    if not found and classes is not None:
        found = _unknown_classes(table, rows.get("unknown_class", []), count, classes, setting)
    return found


def whole_file(
    root: Path,
    tables: dict[str, pd.DataFrame],
    failed: Failed,
    classes: list[str] | None,
    setting: object,
) -> Diagnosis | None:
    """The first split (train, val, test) whose whole file is wrong in one way, or None.

    ``tables`` are the validate stage's frames (``row``, the text columns, the parsed
    ``<column>_value`` coordinates); ``classes`` is the resolved class list, None when it
    could not be resolved; ``setting`` the value of data.classes.
    """
    for split in SPLITS:
        found = diagnose_split(root, split, tables[split], failed, classes, setting)
        if found:
            rows, what, fix, *every_row = found
            message = f"{rows} of {len(tables[split])} rows of annotations-{split}.csv {what}"
            return Diagnosis(split, message, fix, every_row=bool(every_row and every_row[0]))
    return None


def unused_classes(classes: list[str], train_names: list[str], setting: object) -> str | None:
    """A one-line warning when the class list has classes without a clean train row."""
    present = set(train_names)
    unused = [name for name in classes if name not in present]
    if not unused or len(unused) == len(classes):  # no clean train row: the failure says why
        return None
    return (
        f"{len(unused)} of the {len(classes)} classes of {class_list_name(setting)} "
        f"{'has' if len(unused) == 1 else 'have'} no "
        f"train row ({_names(pd.Series(unused))}): the model gets outputs it never learns; "
        f"set `data.classes: auto` to train on the {len(classes) - len(unused)} classes of the "
        "train split"
    )
