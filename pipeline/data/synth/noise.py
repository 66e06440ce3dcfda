"""Label noise: well-formed annotations that are wrong (``synth.label_noise``, off by default).

Validate and dedup cannot see these by design: every row stays a valid box of a known class.
Only a model that disagrees with the label can (the review stage). ``label_noise`` is the
share of images given one noisy annotation, spread evenly over the kinds, each into a
different image that no other defect touched, on the image's main object (the row a one-box
model is trained to find) or, with ``label_noise_objects: any``, on one of its objects drawn
at random (what a detector's review should find too). Below, "main" is that object:

  wrong_class     the class_name of another snack (``true_class``)
  shifted_box     the box moved by 25-50 % of its size, same size (``true_box``)
  loose_box       every side pushed out by 15-35 % of the box's size (``true_box``)
  distractor_box  a box of the same size around background clutter, away from every object
  missing_box     the main object's row deleted (the image keeps its other objects' rows;
                  ``removed_row`` holds the deleted cells)

Each is recorded in the manifest with ``expect: review``. The default (0.0) writes exactly the
manifest it wrote before the option existed, so the pinned default dataset stays byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from numpy.random import Generator

from pipeline.core.config import SNACK_CLASSES
from pipeline.data.boxes import iou
from pipeline.data.contract import ANNOTATION_COLUMNS, BOX_COLUMNS
from pipeline.data.synth.defects import Defect, Row
from pipeline.data.synth.draw import pick
from pipeline.data.synth.images import ImageRecord


@dataclass(frozen=True)
class NoiseSpec:
    """One kind of label noise and what it does to the annotation."""

    summary: str
    needs_other_objects: bool = False  # only images with more than one object


NOISE_SPECS: dict[str, NoiseSpec] = {
    "wrong_class": NoiseSpec("the main object's class_name is another snack"),
    "shifted_box": NoiseSpec("the main box moved by 25-50 % of its size"),
    "loose_box": NoiseSpec("the main box loosened by 15-35 % of its size on every side"),
    "distractor_box": NoiseSpec("the main box placed around background clutter instead"),
    "missing_box": NoiseSpec("the main object never boxed (its row deleted)", True),
}
EXPECT = "review"


def _box(row: Row) -> list[float]:
    return [float(row.get(c)) for c in BOX_COLUMNS]


def _set_box(row: Row, box: list[float]) -> None:
    for column, value in zip(BOX_COLUMNS, box, strict=True):
        row.set(column, f"{min(1.0, max(0.0, value)):.6f}")


class NoiseInjector:
    """Injects label noise into images no earlier defect touched, from its own generator."""

    def __init__(
        self,
        rows: dict[str, list[Row]],
        records: list[ImageRecord],
        defects: list[Defect],
        rng: Generator,
        objects: str = "main",
    ) -> None:
        touched = {(d.split, d.image_id) for d in defects}
        self.rows, self.rng, self.objects = rows, rng, objects
        pool = [r for r in records if (r.split, r.image_id) not in touched]
        self.pool = [pool[int(i)] for i in rng.permutation(len(pool))]
        self.defects: list[Defect] = []

    def run(self, share: float, total_images: int) -> list[Defect]:
        """About ``share`` × images noisy annotations, in equal parts per kind."""
        per_kind = round(share * total_images / len(NOISE_SPECS)) if share > 0 else 0
        if share > 0:
            per_kind = max(1, per_kind)
        for kind, spec in NOISE_SPECS.items():
            for _ in range(per_kind):
                record = self._take(spec.needs_other_objects)
                if record is None:
                    break
                getattr(self, f"_{kind}")(record)
        return self.defects

    def _take(self, several: bool) -> ImageRecord | None:
        """The next unused image (with more than one object when ``several``)."""
        for i, record in enumerate(self.pool):
            if not several or len(record.boxes) > 1:
                return self.pool.pop(i)
        return None

    def _main(self, record: ImageRecord) -> Row:
        """The row to make wrong: the image's main-object row (rendered first among the
        image's rows), or any of its rows with ``objects: any``."""
        mine = self._rows_of(record)
        return mine[int(self.rng.integers(len(mine)))] if self.objects == "any" else mine[0]

    def _rows_of(self, record: ImageRecord) -> list[Row]:
        """The image's rows, in the order they were rendered."""
        return [r for r in self.rows[record.split] if r.get("image_id") == record.image_id]

    def _add(self, kind: str, record: ImageRecord, description: str, row: Row | None, **extra):
        rows = self._rows_of(record)
        self.defects.append(
            Defect(
                kind,
                record.split,
                record.image_id,
                record.folder,
                description,
                row=row,
                rows=rows if row is None else [row],
                extra={"expect": EXPECT, **extra},
            )
        )

    def _wrong_class(self, record: ImageRecord) -> None:
        row = self._main(record)
        true = row.get("class_name")
        row.set("class_name", pick(self.rng, [c for c in SNACK_CLASSES if c != true]))
        self._add("wrong_class", record, f"labelled {row.get('class_name')}", row, true_class=true)

    def _shifted_box(self, record: ImageRecord) -> None:
        row = self._main(record)
        box = _box(row)
        w, h = box[1] - box[0], box[3] - box[2]
        dx, dy = self.rng.uniform(0.25, 0.5, 2) * self.rng.choice([-1, 1], 2) * (w, h)
        _set_box(row, [box[0] + dx, box[1] + dx, box[2] + dy, box[3] + dy])
        self._add("shifted_box", record, "box moved off the object", row, true_box=box)

    def _loose_box(self, record: ImageRecord) -> None:
        row = self._main(record)
        box = _box(row)
        w, h = box[1] - box[0], box[3] - box[2]
        grow = self.rng.uniform(0.15, 0.35, 4) * (w, w, h, h)
        _set_box(row, [box[0] - grow[0], box[1] + grow[1], box[2] - grow[2], box[3] + grow[3]])
        self._add("loose_box", record, "box far larger than the object", row, true_box=box)

    def _distractor_box(self, record: ImageRecord) -> None:
        row = self._main(record)
        box = _box(row)
        w, h = box[1] - box[0], box[3] - box[2]
        objects = [list(b[1:]) for b in record.boxes]
        for _ in range(100):  # a free spot exists for all but the largest objects
            x, y = self.rng.uniform(0, 1 - w), self.rng.uniform(0, 1 - h)
            moved = [x, x + w, y, y + h]
            if all(float(iou(moved, other)) < 0.05 for other in objects):
                _set_box(row, moved)
                self._add("distractor_box", record, "box on clutter", row, true_box=box)
                return

    def _missing_box(self, record: ImageRecord) -> None:
        row = self._main(record)
        self.rows[record.split].remove(row)
        self._add("missing_box", record, "main object not annotated", None, removed_row=row.cells)


def undo(tables: dict[str, pd.DataFrame], entry: dict[str, Any]) -> None:
    """Give one manifest entry's label its truth back, in ``tables`` (split → that split's
    annotation CSV read as strings): the true class or box at its row, or the deleted row
    appended (``missing_box``). What a reviewer who fixes that suspect writes."""
    table = tables[entry["split"]]
    if entry["row"] is None:
        restored = pd.DataFrame([dict(zip(ANNOTATION_COLUMNS, entry["removed_row"], strict=True))])
        tables[entry["split"]] = pd.concat([table, restored], ignore_index=True)
    elif "true_class" in entry:
        table.loc[int(entry["row"]), "class_name"] = entry["true_class"]
    else:
        table.loc[int(entry["row"]), BOX_COLUMNS] = [f"{v:.6f}" for v in entry["true_box"]]
