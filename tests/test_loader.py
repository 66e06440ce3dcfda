"""Target selection and the training generator (boxes move with the pixels)."""

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core.config import AugmentParams
from pipeline.model.loader import (
    ImageBatches,
    ImageCache,
    SnackDataset,
    sample_table,
    select_targets,
)


def rows(*entries):
    cols = ["image_id", "x_min", "x_max", "y_min", "y_max", "class_name", "folder"]
    return pd.DataFrame(entries, columns=cols).assign(split="train")


def test_image_rule_picks_largest_box_of_the_folder_class():
    frame = rows(
        ("a", 0.0, 0.9, 0.0, 0.9, "cake", "apple"),  # larger, but not the folder class
        ("a", 0.1, 0.3, 0.1, 0.3, "apple", "apple"),
        ("a", 0.1, 0.5, 0.1, 0.5, "apple", "apple"),
        ("b", 0.2, 0.4, 0.2, 0.4, "cake", "banana"),  # no folder-class box: largest box
        ("b", 0.0, 0.5, 0.0, 0.5, "candy", "banana"),
    )
    picked = select_targets(frame, "image")
    assert list(picked.image_id) == ["a", "b"]
    assert picked.iloc[0].x_max == 0.5 and picked.iloc[0].class_name == "apple"
    assert picked.iloc[1].class_name == "candy"


def test_rows_rule_keeps_every_row():
    frame = rows(("a", 0, 1, 0, 1, "x", "x"), ("a", 0, 0.5, 0, 0.5, "x", "x"))
    assert len(select_targets(frame, "rows")) == 2


def make_image(path, size=64, box=(0.1, 0.4, 0.2, 0.7)):
    """Black image with a white rectangle at the normalized box (x_min, x_max, y_min, y_max)."""
    array = np.zeros((size, size, 3), dtype=np.uint8)
    x0, x1, y0, y1 = (round(v * size) for v in box)
    array[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")  # lossless, extension .jpg on purpose


def white_box(image: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(image[..., 0] > 127)
    h, w = image.shape[:2]
    return xs.min() / w, (xs.max() + 1) / w, ys.min() / h, (ys.max() + 1) / h


def test_flipped_boxes_follow_the_pixels(tmp_path):
    box = (0.125, 0.375, 0.25, 0.75)
    frame = rows(*[(f"im{i}", *box, "x", "x") for i in range(16)])
    for i in range(16):
        make_image(tmp_path / "train" / "x" / f"im{i}.jpg", box=box)
    samples = sample_table({"train": frame.drop(columns="split")}, ["x", "y"], tmp_path, "image")
    data = SnackDataset(
        samples,
        image_size=64,
        batch_size=16,
        seed=3,
        augment=AugmentParams(hflip=True, crop_scale=(1.0, 1.0), color_jitter=0.0, zoom_out=1.0),
    )
    images, targets = data[0]
    flipped = 0
    for image, target in zip(images, targets["box"], strict=True):
        assert np.allclose(white_box(image), target, atol=1 / 64)
        flipped += not np.allclose(target, box)
    assert 0 < flipped < 16  # both cases happened


def test_epochs_reshuffle_deterministically(tmp_path):
    frame = rows(*[(f"im{i}", 0.1, 0.4, 0.2, 0.7, "x", "x") for i in range(10)])
    for i in range(10):
        make_image(tmp_path / "train" / "x" / f"im{i}.jpg")
    samples = sample_table({"train": frame.drop(columns="split")}, ["x"], tmp_path, "image")
    a = SnackDataset(samples, image_size=32, batch_size=4, shuffle=True, seed=1)
    b = SnackDataset(samples, image_size=32, batch_size=4, shuffle=True, seed=1)
    first = a.order.copy()
    assert np.array_equal(first, b.order)
    a.on_epoch_end()
    assert not np.array_equal(first, a.order)
    assert sorted(a.order) == list(range(10))


def test_cache_gives_the_same_pixels_as_decoding(tmp_path):
    frame = rows(*[(f"im{i}", 0.1, 0.4, 0.2, 0.7, "x", "x") for i in range(3)])
    for i in range(3):
        make_image(tmp_path / "train" / "x" / f"im{i}.jpg")
    samples = sample_table({"train": frame.drop(columns="split")}, ["x"], tmp_path, "image")
    cache = ImageCache(samples.path.tolist(), 48, progress=False)
    plain = SnackDataset(samples, image_size=48, batch_size=3)[0][0]
    cached = SnackDataset(samples, image_size=48, batch_size=3, cache=cache)[0][0]
    assert plain.dtype == np.float32 and plain.shape == (3, 48, 48, 3)
    assert np.array_equal(plain, cached)


def test_image_batches_give_the_dataset_pixels_in_order(tmp_path):
    frame = rows(*[(f"im{i}", 0.1, 0.4, 0.2, 0.7, "x", "x") for i in range(5)])
    for i in range(5):
        make_image(tmp_path / "train" / "x" / f"im{i}.jpg", box=(0.1 * i, 0.5, 0.2, 0.7))
    samples = sample_table({"train": frame.drop(columns="split")}, ["x"], tmp_path, "image")
    batches = ImageBatches(samples.path.tolist(), image_size=32, batch_size=2)
    assert len(batches) == 3 and batches[2].shape == (1, 32, 32, 3)
    images = np.concatenate([batches[i] for i in range(3)])
    expected = SnackDataset(samples, image_size=32, batch_size=5)[0][0]
    assert images.dtype == np.float32 and np.array_equal(images, expected)
