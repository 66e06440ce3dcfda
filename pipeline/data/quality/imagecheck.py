"""Image-file checks of the validate stage (the tabular checks are Great Expectations').

Each referenced file is inspected once (``inspect_images``, on a thread pool with a progress
bar): its header is read first, so a decompression bomb is refused without being decoded;
then it is fully decoded as the loader will see it (EXIF orientation applied, converted to
RGB), so truncated and corrupt files are caught. ``image_problems`` turns what was found into
named check failures; ``ImageFacts.notes`` lists what is unusual but handled by the loader
(PNG named .jpg, grayscale/CMYK/palette/alpha modes, EXIF rotation).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import ExifTags, Image
from tqdm import tqdm

from pipeline.core.config import ValidateParams
from pipeline.data.contract import IMAGE_SUFFIXES, SPLITS, open_image_rgb

IMAGE_WORKERS = 2  # Pillow releases the GIL while decoding; more threads do not help on 2 cores.

# The checks of this module, in report order: name -> what a failure means.
IMAGE_CHECKS: dict[str, str] = {
    "missing_image": "the image file does not exist",
    "unreadable_image": "the file cannot be decoded (truncated, corrupt, not an image)",
    "image_too_small": "an image side is below validate.min_image_side pixels",
    "image_too_large": "more pixels than validate.max_image_pixels (refused undecoded)",
}


@dataclass(frozen=True)
class ImageFacts:
    """What inspecting one image file found."""

    path: Path
    missing: bool = False
    too_large: str | None = None  # why it was refused without decoding
    unreadable: str | None = None  # the decoder's error message
    width: int | None = None
    height: int | None = None
    format: str | None = None
    mode: str | None = None
    orientation: int = 1

    @property
    def decodable(self) -> bool:
        """True when the loader can use the file (it may still be too small)."""
        return not (self.missing or self.too_large or self.unreadable)

    def notes(self) -> list[str]:
        """Facts worth reporting that are not errors (the loader handles them)."""
        found = []
        if self.format and self.format != "JPEG" and self.path.suffix.lower() in {".jpg", ".jpeg"}:
            found.append(f"format_{self.format}_as_jpg")
        if self.mode and self.mode != "RGB":
            found.append(f"mode_{self.mode}")
        if self.orientation not in (0, 1):
            found.append("exif_orientation")
        return found


def image_problems(facts: ImageFacts, limits: ValidateParams) -> list[tuple[str, str]]:
    """(check name, detail) for every image check the file fails."""
    if facts.missing:
        return [("missing_image", f"{facts.path} not found")]
    if facts.too_large:
        return [("image_too_large", facts.too_large)]
    if facts.unreadable:
        return [("unreadable_image", facts.unreadable)]
    side, width, height = limits.min_image_side, facts.width, facts.height
    if width is not None and height is not None and min(width, height) < side:
        return [("image_too_small", f"{width}x{height} px, a side < {side}")]
    return []


def _message(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # unreadable EXIF: assume upright; the full decode decides usability
        return 1


def inspect_image(path: Path, max_pixels: int) -> ImageFacts:
    """Read an image's header, refuse it if too large, else decode it fully.

    Any decoding failure is recorded as the message, never raised: one bad file must not
    stop the stage.
    """
    if not os.path.isfile(path):  # False, not OSError, for a name too long for the FS
        return ImageFacts(path, missing=True)
    try:
        with Image.open(path) as image:  # header only: nothing is decoded yet
            facts = ImageFacts(
                path,
                width=image.width,
                height=image.height,
                format=image.format,
                mode=image.mode,
                orientation=_orientation(image),
            )
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return ImageFacts(path, too_large=_message(exc))  # Pillow's own limit, checked on open
    except Exception as exc:
        return ImageFacts(path, unreadable=_message(exc))
    pixels = facts.width * facts.height
    if pixels > max_pixels:
        return replace(
            facts,
            too_large=f"{facts.width}x{facts.height} = {pixels} pixels "
            f"> max_image_pixels {max_pixels}",
        )
    try:
        open_image_rgb(path, max_pixels=max_pixels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return replace(facts, too_large=_message(exc))
    except Exception as exc:
        return replace(facts, unreadable=_message(exc))
    return facts


def inspect_images(paths: list[Path], max_pixels: int, progress: bool) -> dict[Path, ImageFacts]:
    """Inspect each distinct image once, on a small thread pool."""
    # catch_warnings is process-global: entering it here restores the filters that the
    # worker threads' (open_image_rgb's) own catch_warnings blocks may race on.
    with warnings.catch_warnings(), ThreadPoolExecutor(IMAGE_WORKERS) as pool:
        results = pool.map(lambda path: inspect_image(path, max_pixels), paths)
        facts = list(
            tqdm(
                results, total=len(paths), desc="validate: images", unit="img", disable=not progress
            )
        )
    return dict(zip(paths, facts, strict=True))


def unreferenced_images(root: Path, referenced: set[Path]) -> list[str]:
    """Image files under data/<split>/ that no row points at, relative to root (posix)."""
    found = []
    for split in SPLITS:
        for folder, _, files in os.walk(Path(root) / split):  # does not follow symlinked dirs
            for name in files:
                path = Path(folder) / name
                if path.suffix.lower() in IMAGE_SUFFIXES and path not in referenced:
                    found.append(path.relative_to(root).as_posix())
    return sorted(found)
