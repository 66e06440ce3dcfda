"""Dedup speed: image hashing throughput, and near-duplicate search against all pairs.

In one process:

  (a) fingerprinting images (file read, sha256, decode at reduced scale, EXIF, pHash):
      images/s on 1 thread and on the stage's thread pool. Photo-like JPEGs of 192-512 px
      (the synthetic dataset's sizes) are generated into a temporary folder, or the images of
      --data are used (e.g. a folder made by `snackloc data synth`);
  (b) finding every pair of 64-bit hashes within --radius bits among 10k and 100k hashes
      (random, plus 1 % planted near-copies): multi-index hashing
      (pipeline/data/quality/hashindex.py) next to the all-pairs search (numpy, vectorised
      and blocked), with their ratio. Both must return the same pairs.

Usage (~1 min on 2 cores):
  .venv/bin/python bench/dedup_bench.py [--images 400] [--data DIR] [--radius 4 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import Image

from pipeline.data.quality import fingerprints, hashindex


def photo_like(rng: np.random.Generator) -> Image.Image:
    """A smooth colour field with grain, 192-512 px a side."""
    width, height = (int(v) for v in rng.integers(192, 513, 2))
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    grain = rng.normal(0, 8, image.shape)
    return Image.fromarray(np.clip(image + grain, 0, 255).astype(np.uint8))


def write_images(folder: Path, count: int, rng: np.random.Generator) -> list[Path]:
    paths = []
    for number in range(count):
        path = folder / f"{number:05d}.jpg"
        photo_like(rng).save(path, quality=int(rng.integers(60, 96)))
        paths.append(path)
    return paths


def images_per_second(paths: list[Path], threads: int) -> float:
    start = time.perf_counter()
    if threads == 1:
        for path in paths:
            fingerprints.fingerprint(path)
    else:
        fingerprints.fingerprint_images(paths, progress=False)  # the stage's pool (HASH_WORKERS)
    return len(paths) / (time.perf_counter() - start)


def planted_hashes(n: int, rng: np.random.Generator, max_flips: int) -> np.ndarray:
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False)
    copies = hashes[rng.integers(0, n, n // 100)].copy()
    for i in range(len(copies)):
        for bit in rng.choice(64, int(rng.integers(0, max_flips + 1)), replace=False):
            copies[i] ^= np.uint64(1) << np.uint64(bit)
    return np.concatenate([hashes, copies])


def timed(func, *args) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    value = func(*args)
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=400, help="generated images to hash")
    parser.add_argument("--data", type=Path, help="hash the *.jpg under this folder instead")
    parser.add_argument("--radius", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"dedup benchmark, {os.cpu_count()} cpus")

    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            paths, source = sorted(args.data.rglob("*.jpg")), str(args.data)
            paths = [p for p in paths if _decodes(p)]
        else:
            paths, source = write_images(Path(tmp), args.images, rng), "generated 192-512 px JPEGs"
        fingerprints.fingerprint(paths[0])  # imports imagehash and scipy: not part of the rate
        one = images_per_second(paths, threads=1)
        pool = images_per_second(paths, threads=fingerprints.HASH_WORKERS)
    print(f"(a) fingerprint {len(paths)} images ({source}):")
    workers = fingerprints.HASH_WORKERS
    print(f"    1 thread {one:8.0f} images/s   {workers} threads {pool:8.0f} images/s")

    print("(b) all pairs within the radius (hashes + 1 % planted near-copies)")
    print(f"    {'hashes':>8} {'radius':>6} {'chunks':>6} {'pairs':>7} {'index s':>9} "
          f"{'all-pairs s':>12} {'speed-up':>9}")  # fmt: skip
    widest = max(args.radius)
    for n in args.sizes:
        hashes = planted_hashes(n, np.random.default_rng(n), max_flips=widest)
        # All pairs once, at the widest radius (its cost does not depend on the radius).
        brute_seconds, brute = timed(hashindex.brute_force_pairs, hashes, widest)
        distance = hashindex.hamming(hashes[brute[:, 0]], hashes[brute[:, 1]])
        for radius in args.radius:
            index_seconds, pairs = timed(hashindex.pairs_within, hashes, radius)
            assert np.array_equal(pairs, brute[distance <= radius]), "index and all-pairs differ"
            chunks = len(hashindex.chunk_layout(len(hashes), radius))
            print(
                f"    {len(hashes):>8} {radius:>6} {chunks:>6} {len(pairs):>7} "
                f"{index_seconds:>9.3f} {brute_seconds:>12.2f} "
                f"{brute_seconds / index_seconds:>8.0f}x"
            )


def _decodes(path: Path) -> bool:
    try:
        fingerprints.fingerprint(path)
        return True
    except Exception:
        return False


if __name__ == "__main__":
    main()
