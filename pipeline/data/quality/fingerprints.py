"""Image fingerprints for dedup: sha256 of the bytes, pHash of the displayed image, groups.

Images with the same bytes, or perceptual hashes at most a radius apart (found by
multi-index hashing, ``hashindex``), form groups; linked pairs chain.
"""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.core.errors import UserError
from pipeline.data.contract import open_displayed
from pipeline.data.quality import hashindex

HASH_WORKERS = 2  # decoding and hashlib release the GIL
HASH_DECODE_SIDE = 64  # JPEGs are decoded at reduced scale, at least this many pixels a side


@dataclass(frozen=True)
class Fingerprint:
    """What identifies an image: its bytes' sha256 and its displayed pixels' pHash."""

    sha256: str
    phash: int  # 64-bit perceptual hash of the displayed image


def perceptual_hash(image: Image.Image) -> int:
    """pHash (imagehash) of an image as a 64-bit integer."""
    import imagehash  # imports scipy: only dedup needs it

    bits = imagehash.phash(image).hash.flatten()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def fingerprint(path: Path) -> Fingerprint:
    """sha256 of the file's bytes and the pHash of the image as displayed (EXIF applied).

    The file is read once. JPEGs decode at a reduced scale (``draft``): the hash only needs
    32x32 pixels, and this is several times faster than a full decode.
    """
    data = path.read_bytes()
    shown = open_displayed(io.BytesIO(data), HASH_DECODE_SIDE)
    return Fingerprint(hashlib.sha256(data).hexdigest(), perceptual_hash(shown))


def fingerprint_images(paths: list[Path], progress: bool) -> list[Fingerprint]:
    """Fingerprint each file on a small thread pool, in the order given."""
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise UserError(
            f"{len(missing)} validated image(s) no longer exist, e.g. {missing[0]}",
            hint="the data changed after validation: re-run `dvc repro`",
        )
    with ThreadPoolExecutor(HASH_WORKERS) as pool:
        return list(
            tqdm(
                pool.map(fingerprint, paths),
                total=len(paths),
                unit="img",
                desc="dedup: hashing images",
                disable=not progress,
            )
        )


def image_groups(prints: list[Fingerprint], radius: int) -> list[list[int]]:
    """Groups (positions, ascending) of images with equal bytes or pHashes within ``radius``.

    Linked pairs chain: A~B and B~C put A, B and C in one group. Equal hashes are linked to
    their first occurrence, so a thousand identical images cost a thousand links, not a
    million pairs.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(prints)
    if n < 2:
        return []
    phashes = [p.phash for p in prints]
    values, first = np.unique(np.array(phashes, dtype=np.uint64), return_index=True)
    near = first[hashindex.pairs_within(values, radius)].reshape(-1, 2)
    links = [_links_to_first([p.sha256 for p in prints]), _links_to_first(phashes), near]
    edges = np.concatenate(links)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        groups.setdefault(int(label), []).append(position)
    return [members for members in groups.values() if len(members) > 1]


def _links_to_first(keys: list) -> np.ndarray:
    """(first position of the key, position) for every repeated key."""
    first: dict = {}
    links = [(first.setdefault(key, pos), pos) for pos, key in enumerate(keys)]
    return np.array([link for link in links if link[0] != link[1]], dtype=np.int64).reshape(-1, 2)
