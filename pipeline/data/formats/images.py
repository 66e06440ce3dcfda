"""Finding the image file an annotation names, inside the source only, and reading its header.

No file outside the source folder is ever read: a name that is a URL, an absolute path
elsewhere, a relative path that climbs out with ``..``, or a symbolic link whose target lies
outside, is refused and reported as ``outside_source`` (docs/import.md).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import ExifTags, Image

from pipeline.data.contract import IMAGE_SUFFIXES
from pipeline.data.formats.base import Entry, split_of

ROTATED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height
URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")  # http://, https://, s3://, gs://, file://
DRIVE = re.compile(r"^[a-zA-Z]:/")  # a Windows absolute path, once \ is turned into /
OUTSIDE = "outside_source"

Found = tuple[Path | None, str, str]  # (image file, "", "") or (None, problem kind, detail)


def url_file_name(url: str) -> str:
    """The file name at the end of a URL's path, without query or fragment ("" if none)."""
    path = re.sub(r"[?#].*$", "", URL.sub("", url, count=1))
    return PurePosixPath(path).name if "/" in path else ""


class ImageIndex:
    """Every image file under the source folder, to find the file an annotation names.

    Lookup order for an entry naming ``name`` (then each of its aliases): ``name`` relative
    to each of the entry's hint folders, its annotation file's folder and the source folder;
    then (when ``name`` has no image extension, as YOLO stems and OpenImages IDs) a file of
    that stem in those folders; then the only file under the source folder with that file
    name (or stem). When several match, the one under a folder of the entry's split wins; if
    that does not single one out the image is ambiguous and reported. A name or file that
    leads outside the source folder is refused before anything is read.
    """

    def __init__(self, root: Path, exclude: Path | None = None) -> None:
        self.root = Path(root)
        self.lexical_root = Path(os.path.abspath(self.root))
        self.real_root = self.root.resolve()
        self.by_name: dict[str, list[Path]] = {}
        self.by_stem: dict[str, list[Path]] = {}
        skip = Path(exclude).resolve() if exclude is not None else None  # the import's --out
        for folder, dirs, files in os.walk(self.root):  # does not follow symlinked folders
            dirs[:] = sorted(
                d for d in dirs if not d.startswith(".") and (Path(folder) / d).resolve() != skip
            )
            for name in sorted(files):
                path = Path(folder) / name
                if path.suffix.lower() in IMAGE_SUFFIXES and not name.startswith("."):
                    self.by_name.setdefault(name, []).append(path)
                    self.by_stem.setdefault(path.stem, []).append(path)

    def find(self, entry: Entry) -> Found:
        """The entry's image file, trying its name then its aliases; or why there is none."""
        first: Found | None = None
        for name in (entry.name, *entry.aliases):
            found = self._find_name(name, entry)
            if found[0] is not None or found[1] == OUTSIDE:
                return found
            first = first or found
        assert first is not None
        return first

    def _find_name(self, name: str, entry: Entry) -> Found:
        text = name.replace("\\", "/")
        refused = self._refused_name(name, text)
        if refused:
            return None, OUTSIDE, refused
        posix = PurePosixPath(text)
        bases = [*entry.hints, entry.origin.parent, self.root]
        direct = [Path(posix)] if posix.is_absolute() else [base / posix for base in bases]
        inside = [path for path in direct if self._lexically_inside(path)]
        for candidate in inside:
            if candidate.is_file():
                return self._checked(candidate, name)
        if len(inside) < len(direct):  # read from some folder, the name climbs out of the source
            return None, OUTSIDE, f"refused {name!r}: the path leaves the source folder"
        return self._from_index(posix, name, entry, bases)

    def _from_index(
        self, posix: PurePosixPath, name: str, entry: Entry, bases: list[Path]
    ) -> Found:
        bare = posix.suffix.lower() not in IMAGE_SUFFIXES
        matches = (self.by_stem if bare else self.by_name).get(posix.name, [])
        if bare:
            for base in bases:
                beside = [path for path in matches if path.parent == base]
                if len(beside) == 1:
                    return self._checked(beside[0], name)
        if len(matches) > 1 and entry.split:
            matches = [path for path in matches if self._split(path) == entry.split] or matches
        if len(matches) == 1:
            return self._checked(matches[0], name)
        if not matches:
            where = f"beside {entry.origin.name} or under {self.root}"
            return None, "missing_image", f"no image {name!r} {where}"
        shown = ", ".join(self._relative(path) for path in matches[:3])
        return None, "ambiguous_image", f"{len(matches)} files match {name!r}: {shown}"

    def _refused_name(self, name: str, text: str) -> str:
        """Why a name is refused before any lookup ("" when it may be looked up)."""
        if URL.match(text):
            return f"refused {name!r}: a URL (nothing is downloaded; put the image in the source)"
        if DRIVE.match(text):
            return f"refused {name!r}: an absolute Windows path"
        if text.startswith("/") and not self._lexically_inside(Path(text)):
            return f"refused {name!r}: an absolute path outside the source folder"
        return ""

    def _lexically_inside(self, path: Path) -> bool:
        return Path(os.path.normpath(os.path.abspath(path))).is_relative_to(self.lexical_root)

    def _checked(self, path: Path, name: str) -> Found:
        """``path`` when it really lies inside the source, else refused (a link out)."""
        target = path.resolve()
        if target.is_relative_to(self.real_root):
            return path, "", ""
        return None, OUTSIDE, f"refused {name!r}: a link to {target}, outside the source folder"

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _split(self, path: Path) -> str | None:
        return split_of(path.relative_to(self.root).parts[:-1])


def inside_source(path: Path, root: Path) -> bool:
    """Whether ``path`` (an annotation file) really lies inside ``root``, links resolved."""
    return path.resolve().is_relative_to(Path(root).resolve())


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, without decoding the pixels."""

    fmt: str
    size: tuple[int, int]  # (width, height) as displayed: EXIF orientation applied


def read_header(path: Path) -> ImageHeader:
    """The image's real format and displayed size (raises for what Pillow cannot open)."""
    with Image.open(path) as image:
        width, height = image.size
        try:
            orientation = int(image.getexif().get(ExifTags.Base.Orientation, 1))
        except Exception:  # unreadable EXIF: upright, as the loader assumes
            orientation = 1
        if orientation in ROTATED:
            width, height = height, width
        return ImageHeader(image.format or "unknown", (width, height))
