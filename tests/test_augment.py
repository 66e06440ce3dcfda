"""Boxes move with the pixels under every augmentation (property tests)."""

import numpy as np
from helpers_tiny import NO_AUGMENT
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.config import AugmentParams
from pipeline.model.augment import augment, hflip, visible_fraction

SIZE = 96


def draw(box) -> np.ndarray:
    """Black image with a white rectangle over the normalized box."""
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    x0, x1, y0, y1 = (round(v * SIZE) for v in box)
    image[y0:y1, x0:x1] = 255
    return image


def bright_box(image: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(image[..., 0] > 127)
    return np.array([xs.min(), xs.max() + 1, ys.min(), ys.max() + 1]) / SIZE


boxes = st.tuples(
    st.integers(2, 60), st.integers(12, 34), st.integers(2, 60), st.integers(12, 34)
).map(lambda t: np.array([t[0], t[0] + t[1], t[2], t[2] + t[3]], dtype=np.float32) / SIZE)


@settings(max_examples=80, deadline=None)
@given(
    box=boxes,
    seed=st.integers(0, 2**32 - 1),
    jitter=st.sampled_from([0.0, 0.3]),
    zoom_out=st.sampled_from([1.0, 2.0]),
)
def test_box_drawn_before_matches_box_after(box, seed, jitter, zoom_out):
    config = AugmentParams(
        hflip=True, crop_scale=(0.4, 1.0), min_visible=0.6, color_jitter=jitter, zoom_out=zoom_out
    )
    image, new_box = augment(draw(box), box, config, np.random.default_rng(seed))
    assert image.dtype == np.float32 and image.shape == (SIZE, SIZE, 3)
    assert np.all(new_box[[0, 2]] <= new_box[[1, 3]]) and np.all((new_box >= 0) & (new_box <= 1))
    # Resampling blurs edges by about a pixel of the crop, scaled up to the output.
    assert np.allclose(bright_box(image), new_box, atol=3.5 / SIZE)


def test_hflip_twice_is_identity():
    box = np.array([0.1, 0.3, 0.2, 0.9], dtype=np.float32)
    image = draw(box)
    once_image, once_box = hflip(image, box)
    assert np.allclose(once_box, [0.7, 0.9, 0.2, 0.9])
    twice_image, twice_box = hflip(once_image, once_box)
    assert np.array_equal(twice_image, image) and np.allclose(twice_box, box)


def test_crops_keep_the_minimum_visible_share():
    rng = np.random.default_rng(0)
    box = np.array([0.0, 0.3, 0.0, 0.3])
    config = AugmentParams(
        hflip=False, crop_scale=(0.2, 0.5), min_visible=0.9, color_jitter=0.0, zoom_out=1.0
    )
    for _ in range(50):
        _, new_box = augment(draw(box), box, config, rng)
        # The box never shrinks below 90% of its area in crop coordinates' terms.
        assert (new_box[1] - new_box[0]) * (new_box[3] - new_box[2]) > 0
    assert visible_fraction(box, np.array([0.0, 0.15, 0.0, 0.3])) == 0.5


def test_off_means_untouched():
    box = np.array([0.2, 0.5, 0.1, 0.4], dtype=np.float32)
    image = draw(box)
    out, out_box = augment(image, box, NO_AUGMENT, np.random.default_rng(1))
    assert np.array_equal(out, image.astype(np.float32)) and np.array_equal(out_box, box)
