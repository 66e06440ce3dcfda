"""The one decode of every model input (training, evaluation, predict, serve): a big JPEG
decodes at the smallest DCT scale that still covers what is asked (twice the model's input
for the model), EXIF applied."""

from __future__ import annotations

import io

import numpy as np
from helpers_data import scene_image
from PIL import Image

from pipeline.data.contract import decode_for_model, open_displayed_sized, open_image_rgb


def jpeg(size: tuple[int, int], orientation: int | None = None) -> bytes:
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    out = io.BytesIO()
    scene_image(str(size), size).save(out, "JPEG", quality=92, exif=exif)
    return out.getvalue()


def test_a_jpeg_decodes_at_the_smallest_scale_whose_sides_cover_the_model_input():
    photo = jpeg((640, 480))
    assert open_displayed_sized(io.BytesIO(photo), 128)[0].size == (320, 240)  # 1/2
    assert open_displayed_sized(io.BytesIO(photo), 64)[0].size == (160, 120)  # 1/4
    assert open_displayed_sized(io.BytesIO(photo), 32)[0].size == (80, 60)  # 1/8
    assert open_displayed_sized(io.BytesIO(jpeg((250, 200))), 128)[0].size == (250, 200)
    pixels, shown = decode_for_model(io.BytesIO(photo), 128)
    assert pixels.shape == (128, 128, 3) and pixels.dtype == np.uint8 and shown == (640, 480)
    full = open_image_rgb(io.BytesIO(photo)).resize((128, 128), Image.Resampling.BILINEAR)
    assert np.abs(pixels.astype(float) - np.asarray(full)).mean() < 1.5  # of 255 levels


def test_a_rotated_photo_decodes_reduced_and_upright_with_its_displayed_size():
    image, shown = open_displayed_sized(io.BytesIO(jpeg((640, 480), orientation=6)), 128)
    assert shown == (480, 640) and image.size == (240, 320)
    pixels, shown = decode_for_model(io.BytesIO(jpeg((640, 480), orientation=6)), 128)
    assert pixels.shape == (128, 128, 3) and shown == (480, 640)
