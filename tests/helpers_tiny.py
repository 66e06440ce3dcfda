"""The one tiny setting of the test suite: a model, its training and a dataset small enough
to run in seconds on a CPU. Tiny projects (helpers_project), the model and training tests
and the fault tests all take it from here.

Import as ``from helpers_tiny import TINY, TINY_MODEL, ...``.
"""

from __future__ import annotations

from pipeline.core.config import AugmentParams, ModelParams

# params.yaml values of a tiny project, by section (the rest as in the project's params.yaml)
TINY = {
    "synth": {
        "train_images": 40,
        "val_images": 12,
        "test_images": 12,
        "min_side": 64,
        "max_side": 128,
    },
    "validate": {"max_bad_fraction": 0.6},
    "model": {"alpha": 0.25, "image_size": 32, "box_head_filters": 32},
    "train": {"epochs": 2, "batch_size": 8, "lr_drop_epochs": [2]},
}
TINY_MODEL = ModelParams(**TINY["model"])
# In-process training tests: no augmentation, so that runs can be compared exactly.
NO_AUGMENT = AugmentParams(hflip=False, crop_scale=(1.0, 1.0), color_jitter=0.0, zoom_out=1.0)
