"""Real photos with real pretrained weights: the path every user with a photo folder takes.

The photos (200 raccoon photos with VOC boxes) and the pretrained MobileNetV2 live outside
the repository, in ../shared/ (or where SNACKLOC_REAL_PHOTOS / SNACKLOC_PRETRAINED point);
without them these tests skip and say so. They are imported with the project's own
importer and go through the real validate and dedup stages, as a user's would.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_env import ROOT

from pipeline.core.config import Params
from pipeline.core.paths import Outputs
from pipeline.data.formats.importing import ImportOptions, import_dataset
from pipeline.evaluation import metrics
from pipeline.model import fit as engine
from pipeline.model import hardware
from pipeline.model.model import backbone_of, build_model
from pipeline.model.recipe import describe_recipe
from pipeline.stages import dedup, evaluate, train, validate

SHARED = ROOT.parent / "shared"
PHOTOS = Path(os.environ.get("SNACKLOC_REAL_PHOTOS", SHARED / "real-photos" / "raccoon-voc"))
PRETRAINED = Path(
    os.environ.get("SNACKLOC_PRETRAINED", SHARED / "pretrained" / "mobilenet_v2_1.0_160_dogs.h5")
)
PHOTO_COUNT = 40

pytestmark = pytest.mark.skipif(
    not (PHOTOS.is_dir() and PRETRAINED.is_file()),
    reason=f"real photos ({PHOTOS}) or the pretrained MobileNetV2 ({PRETRAINED}) not found: "
    "they live outside the repository, in ../shared/ (or set SNACKLOC_REAL_PHOTOS and "
    "SNACKLOC_PRETRAINED)",
)


def real_params(root: Path, **train_values) -> Params:
    """The documented real-photo path: a pretrained MobileNetV2 and the class list derived
    from the data; the transfer recipe follows from model.weights alone."""
    return Params.model_validate(
        {
            "data": {"root": str(root), "classes": "auto"},
            "model": {
                "backbone": "mobilenet_v2",
                "alpha": 1.0,
                "image_size": 160,
                "weights": str(PRETRAINED),
            },
            "train": {"batch_size": 8, "workers": 1, **train_values},
        }
    )


@pytest.fixture(scope="module")
def real_project(tmp_path_factory) -> tuple[Path, Outputs]:
    """PHOTO_COUNT real photos imported, validated and deduplicated."""
    tmp = tmp_path_factory.mktemp("real")
    source = tmp / "voc"
    (source / "annotations").mkdir(parents=True)
    (source / "images").mkdir()
    for xml in sorted((PHOTOS / "annotations").glob("*.xml"))[:PHOTO_COUNT]:
        shutil.copy(xml, source / "annotations")
        shutil.copy(PHOTOS / "images" / f"{xml.stem}.jpg", source / "images")
    import_dataset(source, tmp / "data", ImportOptions(fmt="voc", ratios=(0.6, 0.2, 0.2)))
    outputs = Outputs(tmp / "outputs")
    params = real_params(tmp / "data")
    validate.run(params, outputs, progress=False)
    dedup.run(params, outputs, progress=False)
    return tmp / "data", outputs


def box_spread(boxes: np.ndarray) -> float:
    """Mean standard deviation, across images, of the box centre and size."""
    centre = (boxes[:, [0, 2]] + boxes[:, [1, 3]]) / 2
    size = boxes[:, [1, 3]] - boxes[:, [0, 2]]
    return float(np.concatenate([centre, size], axis=1).std(axis=0).mean())


def test_fine_tuning_a_pretrained_backbone_keeps_inference_predictions_apart(
    real_project, tmp_path
):
    """A few steps of fine-tuning must not collapse the model in inference mode.

    Fine-tuned with its BatchNorm layers training, a pretrained backbone drifts away from
    the moving statistics inference uses: its predictions then barely depend on the image.
    """
    root, outputs = real_project
    params = real_params(root)
    assert describe_recipe(params).startswith("transfer")  # from model.weights alone
    # One epoch of heads, two of fine-tuning (every layer but BatchNorm), at the default
    # peak learning rate.
    params = real_params(root, epochs=3, transfer={"head_epochs": 1})
    classes, train_samples, val_samples = train.load_samples(params, outputs)
    train_ds, val_ds = engine.make_datasets(params, train_samples, val_samples, progress=False)
    setup = hardware.configure(params.train)
    result = engine.fit(params, len(classes), train_ds, val_ds, tmp_path / "b", setup, verbose=0)
    images = np.concatenate([train_ds[i][0] for i in range(len(train_ds))])
    boxes = np.asarray(result.model.predict(images, verbose=0)["box"])
    assert box_spread(boxes) > 0.03, boxes[:5]
    # The cause, checked directly: the fine-tuned backbone computes in inference mode the
    # features it trained on (its BatchNorm kept the pretrained statistics).
    backbone = backbone_of(result.model)
    scaled = result.model.get_layer("preprocess")(images[:8])
    np.testing.assert_allclose(
        np.asarray(backbone(scaled, training=True)),
        np.asarray(backbone(scaled, training=False)),
        rtol=1e-4,
        atol=1e-4,
    )
    assert result.history.class_accuracy.iloc[-1] == 1.0  # one class: always right


def test_an_untrained_model_on_real_photos_is_reported_below_the_baseline(real_project):
    """Pretrained features with untrained heads answer about the same box for every photo:
    the evaluation says, first thing, that it is below the trivial baseline."""
    root, outputs = real_project
    params = real_params(root)
    classes = ["raccoon"]
    model = build_model(len(classes), params.model)
    results, _, scored = evaluate.score_splits(params, outputs, model, classes)
    predictions = pd.concat([s.predictions for s in scored.values()], ignore_index=True)
    per_class = metrics.per_class_table(predictions, classes)
    margins = params.evaluate.baseline_margin
    text = evaluate.summary_markdown(results, per_class, "test", [], "run", margins)
    assert "NOT ABOVE THE TRIVIAL BASELINE on test" in text
