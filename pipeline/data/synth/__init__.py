"""The embedded default dataset: a synthetic "snacks" dataset with documented defects.

``generate(out_dir, params)`` writes a dataset in the book's format (the data contract,
``pipeline.data.contract``), byte-for-byte reproducible from ``params.seed``::

    out_dir/train/<folder>/<image_id>.jpg   val/...   test/...
    out_dir/annotations-{train,val,test}.csv   image_id,x_min,x_max,y_min,y_max,class_name,folder
    out_dir/defects.json                       the manifest (below)

Usage: ``generate(Path("data"), load_params().synth)``; it refuses to replace a non-empty folder
(it may hold the real dataset) unless ``overwrite=True``, and swaps the finished tree into place
only at the end. Rendering runs in a ``spawn`` process pool (safe next to threads), so scripts
that call it at top level need the usual ``if __name__ == "__main__":`` guard.

The package, in the order an image is made: ``draw`` (the pen and drawing helpers),
``snacks`` (one drawer per class), ``scenes`` (sprites, backgrounds, the per-image look,
scenes with tight boxes), ``images`` (one task per image, rendered in parallel),
``defects`` (injected afterwards, recorded in the manifest) and this module (writing).

The manifest (defects.json, sorted keys)
    ``seed``, ``params`` (the SynthParams), ``counts`` ({split: {"images": files on disk,
    "rows": CSV data rows}}), ``kinds`` ({kind: {"expect", "summary"}}) and ``defects``: one
    entry per injected defect with ``kind``, ``split``, ``image_id``, ``folder``, ``row`` (0-based
    data-row index in that split's CSV, for row-level kinds; else null), ``rows`` (every CSV row
    concerned, e.g. all rows of a truncated image), ``expect`` (quarantine | dedup | readable |
    report | review: what the pipeline should do), ``description``, and per-kind details
    (pipeline/data/synth/defects.py; label noise, ``synth.label_noise``: noise.py).

Determinism: every image has its own ``numpy.random.Generator`` (PCG64) seeded with
``[seed, 1, split_index, image_index]``, so images are independent and rendered in parallel;
defects use ``[seed, 3]``. JPEGs are written by Pillow with explicit quality and subsampling and
no metadata; CSVs and the manifest are written in a fixed order (with Pillow pinned in
uv.lock: Pillow 13 writes the same bytes for the same array in every process).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.config import SynthParams
from pipeline.core.files import check_replaceable, replaced_dir
from pipeline.data.contract import ANNOTATION_COLUMNS, MANIFEST_NAME, SPLITS, annotations_path
from pipeline.data.synth.defects import DEFECT_SPECS, Defect, Injector, Row, record_rows
from pipeline.data.synth.images import entropy, render_all
from pipeline.data.synth.noise import NOISE_SPECS, NoiseInjector


def _write_csv(path: Path, rows: Iterable[Row]) -> None:
    """Write an annotation CSV with the contract's header, "\\n" line ends, UTF-8."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(ANNOTATION_COLUMNS)
        writer.writerows(row.cells for row in rows)


def _count_files(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0


def _finish(
    root: Path, rows: dict[str, list[Row]], defects: list[Defect], params: SynthParams
) -> dict[str, Any]:
    """Sort rows, write the CSVs and the manifest; return the manifest."""
    entries, counts = [], {}
    for split in SPLITS:
        ordered = sorted(rows[split], key=lambda row: row.get("image_id"))  # stable
        _write_csv(annotations_path(root, split), ordered)
        index = {id(row): i for i, row in enumerate(ordered)}
        counts[split] = {"images": _count_files(root / split), "rows": len(ordered)}
        entries += [d.to_json(index) for d in defects if d.split == split]
    kind_order = [*DEFECT_SPECS, *NOISE_SPECS]
    entries.sort(
        key=lambda e: (
            SPLITS.index(e["split"]),
            kind_order.index(e["kind"]),
            e["rows"][:1],
            e["image_id"],
        )
    )
    kinds = {k: {"expect": s.expect, "summary": s.summary} for k, s in DEFECT_SPECS.items()}
    if params.label_noise:
        kinds |= {k: {"expect": "review", "summary": s.summary} for k, s in NOISE_SPECS.items()}
    manifest = {
        "seed": params.seed,
        # the noise params only when set: the default dataset's manifest stays byte-identical
        "params": params.model_dump(mode="json", exclude=unset_noise_params(params)),
        "counts": counts,
        "kinds": kinds,
        "defects": entries,
    }
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def unset_noise_params(params: SynthParams) -> set[str]:
    """The label-noise params left out of the manifest: those at their default."""
    unset = set()
    if not params.label_noise:
        unset.add("label_noise")
    if params.label_noise_objects == "main":
        unset.add("label_noise_objects")
    return unset


def generate(
    out_dir: Path,
    params: SynthParams,
    progress: bool = True,
    *,
    workers: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the synthetic snacks dataset to ``out_dir``; return the manifest (defects.json).

    The result depends only on ``params`` (not on ``workers`` or the machine, with Pillow and
    numpy pinned). ``workers`` defaults to all cores (one process for tiny datasets). A
    non-empty ``out_dir`` is replaced only with ``overwrite=True``, and only once the new
    dataset is complete.
    """
    out_dir = Path(out_dir)
    check_replaceable(out_dir, overwrite)
    with replaced_dir(out_dir) as tmp:
        records = render_all(tmp, params, progress, workers)
        for split in SPLITS:
            (tmp / split).mkdir(exist_ok=True)
        rows = {split: [] for split in SPLITS}
        for record in records:
            rows[record.split] += record_rows(record)
        defects: list[Defect] = []
        if params.inject_defects:
            rng = np.random.default_rng([entropy(params.seed), 3])
            defects = Injector(tmp, rows, records, rng).run(len(records))
        if params.label_noise:  # its own generator: the other defects stay where they were
            rng = np.random.default_rng([entropy(params.seed), 4])
            injector = NoiseInjector(rows, records, defects, rng, params.label_noise_objects)
            defects += injector.run(params.label_noise, len(records))
        manifest = _finish(tmp, rows, defects, params)
    return manifest
