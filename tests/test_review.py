"""The review ranking: injected label noise is found near the top, and reported per kind."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.config import SNACK_CLASSES, SynthParams
from pipeline.core.errors import UserError
from pipeline.data import synth
from pipeline.data.contract import BOX_COLUMNS, SPLITS, annotations_path, image_path
from pipeline.data.synth.noise import undo
from pipeline.evaluation import coco, review
from pipeline.model.loader import select_targets

NOISY = SynthParams(
    train_images=60, val_images=20, test_images=20, min_side=64, max_side=96,
    inject_defects=False, label_noise=0.25,
)  # fmt: skip
# What the model speaks for: one box and class per image. It cannot tell a secondary object's
# label from a wrong one, so noise is injected on the main object, which it can judge.
JUDGEABLE = ("wrong_class", "shifted_box", "loose_box", "distractor_box", "missing_box")


@pytest.fixture(scope="module")
def noisy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("noisy") / "data"
    manifest = synth.generate(root, NOISY, progress=False, workers=1)
    return root, manifest


def annotation_rows(root) -> pd.DataFrame:
    frames = []
    for split in SPLITS:
        frame = pd.read_csv(annotations_path(root, split), dtype={"image_id": str})
        frames.append(frame.assign(split=split, row=np.arange(len(frame))))
    rows = pd.concat(frames, ignore_index=True)
    targets = select_targets(rows.assign(_i=rows.index))._i
    return rows.assign(target=rows.index.isin(targets))


def truth(rows: pd.DataFrame, manifest: dict) -> dict[tuple[str, str], tuple[str, list[float]]]:
    """The true main object of every image: the rows with the injected noise undone."""
    main = {}
    for r in rows.itertuples():
        main.setdefault((r.split, r.image_id), (r.class_name, [getattr(r, c) for c in BOX_COLUMNS]))
    for d in manifest["defects"]:
        key, fields = (d["split"], d["image_id"]), main.get((d["split"], d["image_id"]))
        if d["kind"] == "wrong_class":
            main[key] = (d["true_class"], fields[1])
        elif "true_box" in d:
            main[key] = (fields[0], d["true_box"])
        elif d["kind"] == "missing_box":
            cells = d["removed_row"]
            main[key] = (cells[5], [float(v) for v in cells[1:5]])
    return main


def good_model(rows, manifest, root, seed=0):
    """Held-out predictions of a decent model: the true class at 0.5-0.95, the box within ±5 %."""
    rng = np.random.default_rng(seed)
    main = truth(rows, manifest)
    images = rows.drop_duplicates(["split", "folder", "image_id"])[["split", "folder", "image_id"]]
    sizes = [Image.open(image_path(root, *key)).size for key in images.itertuples(index=False)]
    images = images.assign(width=[s[0] for s in sizes], height=[s[1] for s in sizes])
    probs, boxes = [], []
    for image in images.itertuples():
        name, box = main[(image.split, image.image_id)]
        p = rng.dirichlet(np.ones(len(SNACK_CLASSES))) * 0.5
        p[SNACK_CLASSES.index(name)] += rng.uniform(0.5, 0.95)
        probs.append(p / p.sum())
        w, h = box[1] - box[0], box[3] - box[2]
        boxes.append(np.array(box) + rng.uniform(-0.05, 0.05, 4) * (w, w, h, h))
    return images.reset_index(drop=True), np.array(probs), np.clip(np.array(boxes), 0, 1)


def test_label_noise_is_recorded_and_keeps_rows_well_formed(noisy_data):
    root, manifest = noisy_data
    noise = [d for d in manifest["defects"] if d["expect"] == "review"]
    assert {d["kind"] for d in noise} == set(JUDGEABLE)
    assert manifest["params"]["label_noise"] == NOISY.label_noise
    rows = annotation_rows(root)
    assert rows.class_name.isin(SNACK_CLASSES).all()
    assert ((rows.x_min < rows.x_max) & (rows.y_min < rows.y_max)).all()
    for d in noise:
        if d["row"] is not None:
            row = rows[(rows.split == d["split"]) & (rows.row == d["row"])].iloc[0]
            assert row.image_id == d["image_id"]


def test_label_noise_is_off_by_default_and_leaves_the_manifest_as_before(tmp_path):
    """The pinned default dataset (data.dvc) must not change: no new key, no new kind."""
    assert SynthParams().label_noise == 0.0
    tiny = SynthParams(train_images=4, val_images=2, test_images=2, min_side=32, max_side=48)
    manifest = synth.generate(tmp_path / "data", tiny, progress=False, workers=1)
    text = (tmp_path / "data" / "defects.json").read_text()
    assert "label_noise" not in text and '"review"' not in text
    assert json.loads(text) == manifest


def test_undoing_every_injected_label_gives_back_the_clean_dataset(noisy_data, tmp_path):
    """The manifest holds the truth of each noisy label: undone, the rows are those of the
    same seed without noise (what bench/review_fix.py's reviewer writes back)."""
    root, manifest = noisy_data
    clean = tmp_path / "clean"
    synth.generate(clean, NOISY.model_copy(update={"label_noise": 0.0}), False, workers=1)

    def read(folder):
        return {
            s: pd.read_csv(annotations_path(folder, s), dtype=str, keep_default_na=False)
            for s in SPLITS
        }

    def rows(tables):
        return {s: sorted(map(tuple, t.to_numpy().tolist())) for s, t in tables.items()}

    tables = read(root)
    assert rows(tables) != rows(read(clean))
    for entry in manifest["defects"]:
        if entry["expect"] == "review":
            undo(tables, entry)
    assert rows(tables) == rows(read(clean))


def test_the_ranking_finds_each_kind_of_noise_in_twice_as_many_suspects(noisy_data):
    root, manifest = noisy_data
    rows = annotation_rows(root)
    images, probs, boxes = good_model(rows, manifest, root)
    scored, image_suspects = review.score_rows(rows, images, probs, boxes, list(SNACK_CLASSES))
    ranked = review.rank(scored, image_suspects)
    noise = [d for d in manifest["defects"] if d["expect"] == "review"]
    cut = 2 * len(noise)
    recall = review.recall_by_kind(ranked, manifest["defects"], cut)
    for kind in JUDGEABLE:
        assert recall[kind]["recall"] >= 0.8, (kind, recall)
    assert review.precision_at(ranked, manifest["defects"], cut) >= 0.4


ANY_OBJECT = NOISY.model_copy(update={"label_noise_objects": "any", "label_noise": 0.6})


def good_detector(rows, root, manifest, seed=0):
    """A decent detector's list: every true object (the noise undone) at its true class,
    score 0.5-0.95, box within ±5 %, best first; padded like the saved detector's outputs."""
    rng = np.random.default_rng(seed)
    tables = {
        s: pd.read_csv(annotations_path(root, s), dtype=str, keep_default_na=False) for s in SPLITS
    }
    for entry in manifest["defects"]:
        if entry["expect"] == "review":
            undo(tables, entry)
    true = pd.concat([t.assign(split=s) for s, t in tables.items()], ignore_index=True)
    images = rows.drop_duplicates(["split", "folder", "image_id"])[["split", "folder", "image_id"]]
    most = int(true.groupby(["split", "image_id"]).size().max())
    count = len(images)
    out = {
        "boxes": np.zeros((count, most, 4)),
        "scores": np.zeros((count, most)),
        "classes": np.full((count, most), -1),
        "num_detections": np.zeros(count, int),
    }
    for n, image in enumerate(images.itertuples()):
        objects = true[(true.split == image.split) & (true.image_id == image.image_id)]
        scores = np.sort(rng.uniform(0.5, 0.95, len(objects)))[::-1]
        for k, obj in enumerate(objects.itertuples()):
            box = np.array([float(getattr(obj, c)) for c in BOX_COLUMNS])
            w, h = box[1] - box[0], box[3] - box[2]
            out["boxes"][n, k] = np.clip(box + rng.uniform(-0.05, 0.05, 4) * (w, w, h, h), 0, 1)
            out["scores"][n, k] = scores[k]
            out["classes"][n, k] = SNACK_CLASSES.index(obj.class_name)
        out["num_detections"][n] = len(objects)
    return out


def test_a_detectors_list_judges_the_classes_a_one_box_answer_cannot(tmp_path):
    """Noise on any object of an image: the one-box answer leaves the secondary rows
    unjudged; a detector's list judges their class (each row under the detections on it)
    and finds their wrong classes, while the rows the one-box answer judges keep their
    scores, and a row no detection is on stays unjudged."""
    root = tmp_path / "data"
    manifest = synth.generate(root, ANY_OBJECT, progress=False, workers=1)
    rows = annotation_rows(root)
    images, probs, boxes = good_model(rows, manifest, root)
    outputs = good_detector(rows, root, manifest)  # as the saved detector answers
    detections = coco.model_detections(outputs)
    noise = [d for d in manifest["defects"] if d["expect"] == "review"]
    one_box = review.score_rows(rows, images, probs, boxes, list(SNACK_CLASSES))
    listed = review.score_rows(rows, images, probs, boxes, list(SNACK_CLASSES), detections)
    unjudged = one_box[0][one_box[0].kind == "not_judged"]
    elsewhere = [  # wrong classes of rows the one-box answer does not speak for
        d for d in noise
        if d["kind"] == "wrong_class"
        and ((unjudged.split == d["split"]) & (unjudged.row == d["row"])).any()
    ]  # fmt: skip
    assert len(elsewhere) >= 2
    assert all(review.found_in_top(review.rank(*listed), elsewhere, len(noise)))
    judged = one_box[0].kind != "not_judged"
    pd.testing.assert_series_equal(listed[0].score[judged], one_box[0].score[judged])
    secondary = listed[0][~judged]
    assert (~judged).sum() > 10 and (secondary.kind == "class").mean() > 0.8
    moved = {(d["split"], d["row"]) for d in noise if "true_box" in d}  # off their object
    left = secondary[secondary.kind == "not_judged"]
    assert set(zip(left.split, left.row, strict=True)) <= moved  # the others: on a detection
    # a row whose object the detector missed is not judged from the list
    outputs["num_detections"][:] = 0
    missed = review.score_rows(
        rows, images, probs, boxes, list(SNACK_CLASSES), coco.model_detections(outputs)
    )
    assert (missed[0].kind == "not_judged").sum() == (~judged).sum()


def test_the_review_stage_ranks_the_held_out_rows_and_reports(noisy_data, tmp_path, monkeypatch):
    """The real stage on real files: validate, dedup, a tiny saved model, an MLflow store."""
    import mlflow
    from helpers_model import save_tiny_model

    from pipeline.core.config import DataParams, Params, ValidateParams
    from pipeline.core.files import write_json
    from pipeline.core.paths import Outputs
    from pipeline.integrations import tracking
    from pipeline.stages import run_stage

    root, manifest = noisy_data
    monkeypatch.chdir(tmp_path)  # the MLflow store is the project's own, here
    params = Params(
        data=DataParams(root=root),
        validate=ValidateParams(data_docs=False, max_bad_fraction=1.0),
        review={"gallery_images": 4},
    )
    outputs = Outputs(tmp_path / "outputs")
    run_stage("validate", params, outputs, progress=False)
    run_stage("dedup", params, outputs, progress=False)
    classes = json.loads(outputs.classes.read_text())["classes"]
    save_tiny_model(outputs.train_dir, classes)
    run = mlflow.MlflowClient(tracking.tracking_uri()).create_run(
        tracking.setup_experiment(params.mlflow.experiment)
    )
    write_json(outputs.mlflow_run, {"run_id": run.info.run_id})

    report = run_stage("review", params, outputs, progress=False)
    table = pd.read_csv(outputs.review_table)
    # every row once: val and test by the model, train by out-of-fold heads
    every = sum(len(pd.read_csv(outputs.deduped(s))) for s in ("train", "val", "test"))
    assert (table.row >= 0).sum() == every == report["rows"]
    assert set(table.split) == {"train", "val", "test"}
    assert (table[table.split == "train"].kind != "not_judged").any()
    assert list(table["rank"]) == list(range(1, len(table) + 1))
    assert table.score.dropna().is_monotonic_increasing
    assert set(table.kind) <= {"class", "box", "overlooked", "not_judged"}
    assert outputs.review_gallery.stat().st_size > 0
    saved = json.loads(outputs.review_report.read_text())
    assert saved["injected"] == sum(d["expect"] == "review" for d in manifest["defects"])
    assert 0.0 <= saved["precision"] <= 1.0
    logged = mlflow.MlflowClient(tracking.tracking_uri()).get_run(run.info.run_id)
    assert "review_rows" in logged.data.metrics

    # The suspects go to Label Studio with the rows of their images, row ids kept.
    from helpers_labelstudio import sdk_errors

    from pipeline.ops.review_export import export_review

    line = export_review(params, outputs, tmp_path / "ls", top=5)
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert line.startswith(f"{len(tasks)} Label Studio tasks") and 1 <= len(tasks) <= 5
    first = table[table.kind != "not_judged"].iloc[0]
    assert (
        tasks[0]["data"]["snackloc_image"] == f"{first.split}/{first.folder}/{first.image_id}.jpg"
    )
    config = (tmp_path / "ls" / "label_config.xml").read_text()
    assert config.count("<Label ") == len(classes)
    assert sdk_errors(config, tasks) == []  # label-studio-sdk's own check of the tasks
    # ... or to CVAT: the same images, their rows and one suggestion each, images beside.
    line = export_review(params, outputs, tmp_path / "cvat", top=5, fmt="cvat")
    assert line.startswith(f"{len(tasks)} images (")
    xml = ET.parse(tmp_path / "cvat" / "annotations.xml").getroot()
    names = [image.get("name") for image in xml.iter("image")]
    assert names == [task["data"]["snackloc_image"] for task in tasks]
    assert all((tmp_path / "cvat" / "images" / name).is_file() for name in names)
    row_ids = json.loads((tmp_path / "cvat" / "rows.json").read_text())
    assert row_ids == {task["data"]["snackloc_image"]: task["data"]["rows"] for task in tasks}
    reviews = [a.text for a in xml.iter("attribute")]
    assert reviews.count("suggestion") == len(tasks)
    assert reviews.count("label") == sum(len(t["data"]["rows"]) for t in tasks)
    with pytest.raises(UserError, match="unknown review export format"):
        export_review(params, outputs, tmp_path / "x", top=5, fmt="yolo")


@pytest.mark.parametrize(
    ("review", "message"),
    [
        ({"splits": []}, "review.splits"),
        ({"splits": ["train"]}, "review.splits"),
        ({"folds": 1}, "review.folds"),
    ],
)
def test_review_params_are_checked_with_the_key_named(tmp_path, review, message):
    from pipeline.core.config import load_params

    path = tmp_path / "params.yaml"
    path.write_text(json.dumps({"review": review}))
    with pytest.raises(UserError, match=message):
        load_params(path)


def test_every_training_image_is_held_out_by_exactly_one_fold():
    from pipeline.model.crossval import fold_of

    fold = fold_of(23, 5, seed=3)
    assert sorted(np.bincount(fold)) == [4, 4, 5, 5, 5]  # balanced, every image once
    assert (fold == fold_of(23, 5, seed=3)).all()  # seeded: the same folds every run
    assert (fold != fold_of(23, 5, seed=4)).any()


def test_the_review_stage_judges_a_detectors_other_rows_from_its_list(
    noisy_data, tmp_path, monkeypatch
):
    """The stage with a saved detector: held-out rows beside the one-box answer's are
    judged for their class from the detections on them, where there are any."""
    import mlflow
    from helpers_model import save_tiny_detector

    from pipeline.core.config import DataParams, Params, ValidateParams
    from pipeline.core.files import write_json
    from pipeline.core.paths import Outputs
    from pipeline.integrations import tracking
    from pipeline.stages import run_stage

    root, _ = noisy_data
    monkeypatch.chdir(tmp_path)
    params = Params(
        data=DataParams(root=root),
        validate=ValidateParams(data_docs=False, max_bad_fraction=1.0),
        review={"gallery_images": 4, "folds": 0},
    )
    outputs = Outputs(tmp_path / "outputs")
    run_stage("validate", params, outputs, progress=False)
    run_stage("dedup", params, outputs, progress=False)
    classes = json.loads(outputs.classes.read_text())["classes"]
    save_tiny_detector(outputs.train_dir, classes, max_detections=20)
    run = mlflow.MlflowClient(tracking.tracking_uri()).create_run(
        tracking.setup_experiment(params.mlflow.experiment)
    )
    write_json(outputs.mlflow_run, {"run_id": run.info.run_id})
    run_stage("review", params, outputs, progress=False)
    table = pd.read_csv(outputs.review_table)
    per_image = table[table.row >= 0].groupby(["split", "image_id"]).kind
    judged = per_image.apply(lambda kinds: int((kinds != "not_judged").sum()))
    assert (judged > 1).any()  # more than the one row the one-box answer speaks for
