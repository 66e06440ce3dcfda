"""Validate + dedup judged against the synthetic dataset's manifest (data/defects.json).

Every injected defect must be caught by the right check (recall 1.0 per kind) and nothing
else may be quarantined or removed (precision 1.0). The manifest's ``expect`` field says
where each kind must show: ``quarantine`` (validate, with the check below), ``dedup``
(removed with its pair), ``readable`` (rows kept, image noted) or ``report``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers_data import read_text_csv

from pipeline.core.config import DataParams, Params, SynthParams, ValidateParams
from pipeline.core.paths import Outputs
from pipeline.data import synth
from pipeline.data.contract import SPLITS
from pipeline.data.quality.checks import CHECKS
from pipeline.data.synth import defects
from pipeline.stages import dedup, validate

# The default seed at a small size: synth injects at least 1-2 of every kind.
SMALL = SynthParams(train_images=60, val_images=20, test_images=20, min_side=64, max_side=128)

QUARANTINE_CHECK = {
    "box_out_of_range": "out_of_range",
    "box_inverted": "inverted_box",
    "unknown_class": "unknown_class",
    "text_in_number": "not_a_number",
    "empty_value": "missing_value",
    "missing_file": "missing_image",
    "path_traversal": "unsafe_path",
    "truncated_jpeg": "unreadable_image",
    "corrupt_file": "unreadable_image",
}
DEDUP_KIND = {
    "duplicate_row": "duplicate_row",
    "duplicate_box": "duplicate_box",
    "exact_duplicate_image": "duplicate_image",
    "near_duplicate_image": "near_duplicate_image",
}
READABLE_NOTE = {
    "grayscale_image": "mode_L",
    "cmyk_image": "mode_CMYK",
    "png_as_jpg": "format_PNG_as_jpg",
    "exif_rotated": "exif_orientation",
}


@dataclass
class Judged:
    manifest: dict[str, Any]
    quarantine: pd.DataFrame
    removed: pd.DataFrame
    validated: dict[str, pd.DataFrame]
    report: dict[str, Any]

    def reasons(self) -> dict[tuple[str, int], set[str]]:
        return {
            (r.split, int(r.row)): set(r.reasons.split(";")) for r in self.quarantine.itertuples()
        }

    def removals(self) -> dict[tuple[str, int], Any]:
        return {(r.split, int(r.row)): r for r in self.removed.itertuples()}

    def rows_of(self, split: str, image_id: str) -> list[int]:
        frame = self.validated[split]
        return [int(row) for row in frame.loc[frame["image_id"] == image_id, "row"]]


def run_and_judge(root: Path, params: SynthParams) -> Judged:
    manifest = synth.generate(root / "data", params, progress=False)
    outputs = Outputs(root / "outputs")
    stage_params = Params(
        data=DataParams(root=root / "data"), validate=ValidateParams(data_docs=False)
    )
    report = validate.run(stage_params, outputs, progress=False)
    dedup.run(stage_params, outputs, progress=False)
    return Judged(
        manifest,
        read_text_csv(outputs.quarantine),
        read_text_csv(outputs.duplicates),
        {split: read_text_csv(outputs.validated(split)) for split in SPLITS},
        report,
    )


def quarantine_recall(judged: Judged) -> dict[str, float]:
    """Per kind: share of its rows quarantined with the kind's check among the reasons."""
    reasons = judged.reasons()
    caught, total = defaultdict(int), defaultdict(int)
    for defect in judged.manifest["defects"]:
        if defect["expect"] != "quarantine":
            continue
        for row in defect["rows"]:
            total[defect["kind"]] += 1
            found = reasons.get((defect["split"], row), set())
            caught[defect["kind"]] += QUARANTINE_CHECK[defect["kind"]] in found
    return {kind: caught[kind] / total[kind] for kind in total}


def image_pair_removed(judged: Judged, defect: dict[str, Any], kind: str) -> bool:
    """The copy's rows removed as copies of the source, or the source's as copies of it
    (which of the two is kept depends only on the split and row order)."""
    removals = judged.removals()
    ends = [
        (defect["split"], defect["image_id"], defect["source_image_id"]),
        (defect["source_split"], defect["source_image_id"], defect["image_id"]),
    ]
    for split, image_id, kept_id in ends:
        rows = judged.rows_of(split, image_id)
        found = [removals.get((split, row)) for row in rows]
        if rows and all(r is not None and r.kept_image_id == kept_id for r in found):
            want = "leaked_image" if defect["cross_split"] else kind
            return all(r.kind == want for r in found)
    return False


def dedup_recall(judged: Judged) -> dict[str, float]:
    removals = judged.removals()
    caught, total = defaultdict(int), defaultdict(int)
    for defect in judged.manifest["defects"]:
        kind = DEDUP_KIND.get(defect["kind"])
        if kind is None:
            continue
        total[defect["kind"]] += 1
        if defect["kind"] in ("duplicate_row", "duplicate_box"):
            found = removals.get((defect["split"], defect["row"]))
            ok = found is not None and found.kind == kind
            caught[defect["kind"]] += ok and int(found.kept_row) == defect["duplicate_of"]
        else:
            caught[defect["kind"]] += image_pair_removed(judged, defect, kind)
    return {kind: caught[kind] / total[kind] for kind in total}


def expected_removed_rows(judged: Judged) -> set[tuple[str, int]]:
    """Rows dedup should remove: the duplicate rows and boxes, and one end of every image pair."""
    removals, expected = judged.removals(), set()
    for defect in judged.manifest["defects"]:
        if defect["kind"] in ("duplicate_row", "duplicate_box"):
            expected.add((defect["split"], defect["row"]))
        elif defect["kind"] in ("exact_duplicate_image", "near_duplicate_image"):
            for split, image_id in [
                (defect["split"], defect["image_id"]),
                (defect["source_split"], defect["source_image_id"]),
            ]:
                rows = {(split, row) for row in judged.rows_of(split, image_id)}
                if rows <= removals.keys():
                    expected |= rows
    return expected


def assert_judged(judged: Judged) -> None:
    kinds = {defect["kind"] for defect in judged.manifest["defects"]}
    assert kinds == set(defects.DEFECT_SPECS)  # every kind was injected at least once
    assert quarantine_recall(judged) == dict.fromkeys(QUARANTINE_CHECK, 1.0)
    assert dedup_recall(judged) == dict.fromkeys(DEDUP_KIND, 1.0)

    # Precision: only defect rows are quarantined, each with exactly its kind's checks.
    expected = defaultdict(set)
    for defect in judged.manifest["defects"]:
        if defect["expect"] == "quarantine":
            for row in defect["rows"]:
                expected[defect["split"], row].add(QUARANTINE_CHECK[defect["kind"]])
    assert judged.reasons() == dict(expected)
    assert set(judged.removals()) == expected_removed_rows(judged)

    details = judged.report["details"]
    for defect in judged.manifest["defects"]:
        name = f"{defect['split']}/{defect['folder']}/{defect['image_id']}.jpg"
        if defect["expect"] == "readable":
            assert READABLE_NOTE[defect["kind"]] in details["noted_images"][name]
        if defect["expect"] == "report":
            assert name in details["unreferenced_images"]
    unreferenced = [d for d in judged.manifest["defects"] if d["expect"] == "report"]
    assert judged.report["unreferenced_images"] == len(unreferenced)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Judged:
    return run_and_judge(tmp_path_factory.mktemp("quality"), SMALL)


def test_every_quarantine_defect_is_caught_by_its_check(small):
    assert quarantine_recall(small) == dict.fromkeys(QUARANTINE_CHECK, 1.0)


def test_every_dedup_defect_is_removed_with_its_pair(small):
    assert dedup_recall(small) == dict.fromkeys(DEDUP_KIND, 1.0)


def test_precision_and_the_rest_of_the_manifest(small):
    assert_judged(small)


@pytest.mark.slow
def test_default_dataset_at_full_size(tmp_path):
    """The embedded default (params.yaml synth section, ~2100 images): about a minute."""
    assert_judged(run_and_judge(tmp_path, SynthParams()))


def test_manifest_kinds_are_all_judged():
    judged = {*QUARANTINE_CHECK, *DEDUP_KIND, *READABLE_NOTE, "unreferenced_image"}
    assert judged == set(defects.DEFECT_SPECS)
    for kind, spec in defects.DEFECT_SPECS.items():
        expect = {
            **dict.fromkeys(QUARANTINE_CHECK, "quarantine"),
            **dict.fromkeys(DEDUP_KIND, "dedup"),
            **dict.fromkeys(READABLE_NOTE, "readable"),
        }.get(kind, "report")
        assert spec.expect == expect, kind
    assert set(QUARANTINE_CHECK.values()) <= set(CHECKS)
