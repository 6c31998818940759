"""Build time and disk size of the shared image cache (medclf.data.image_cache), per 1,000 images.

    PYTHONPATH=python .venv/bin/python benchmarks/cache_build.py [--images ../shared/data/ham10000_dev/images]
        [--sizes 224 512] [--workers 2] [--limit N] [--out DIR]

For each size: a first build into an empty cache folder (hashing every file's bytes, decoding
with --workers processes, writing images.npy), then a second call on the same files, which only
stats them and maps the finished cache (what every later run and every other process of a run
pays). Disk size is what images.npy occupies (N x 3 x side x side bytes). The cache folder is
deleted afterwards unless --out is given.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from medclf.data import image_cache


def measure(paths, side, root, workers):
    """(hash s, build s, reuse s, bytes on disk) of one size."""
    started = time.perf_counter()
    key = image_cache.cache_key(image_cache.content_hashes(paths, root), side)
    hashed = time.perf_counter() - started
    started = time.perf_counter()
    image_cache.shared_cache(paths, side, root, "bench", progress=True, workers=workers)
    built = time.perf_counter() - started
    started = time.perf_counter()
    image_cache.shared_cache(paths, side, root, "bench", progress=False, workers=workers)
    reused = time.perf_counter() - started
    images = root / key[:32] / "images.npy"
    return hashed, built, reused, images.stat().st_blocks * 512


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default="../shared/data/ham10000_dev/images", help="folder of image files")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512], help="cache sides in pixels")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N files (sorted by name)")
    parser.add_argument("--out", default=None, help="keep the caches in this folder (default: a deleted temp folder)")
    args = parser.parse_args(argv)
    paths = sorted(p for p in Path(args.images).iterdir() if p.is_file())[:args.limit]
    if not paths:
        sys.exit(f"{args.images}: no files")
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="medclf_cache_bench_"))
    print(f"{len(paths)} files from {args.images}, {args.workers} decoding processes, cache in {root}")
    print("| side | images | hash s | build s (hash included) | build s / 1,000 images | reuse s | disk MB | "
          "disk MB / 1,000 images |")
    print("|---|---|---|---|---|---|---|---|")
    try:
        for side in args.sizes:
            (root / "file_sha256.json").unlink(missing_ok=True)  # each size pays the hashing, as a first run does
            hashed, built, reused, size = measure(paths, side, root, args.workers)
            total = hashed + built
            k = len(paths) / 1000
            print(f"| {side} | {len(paths)} | {hashed:.2f} | {total:.1f} | {total / k:.1f} | {reused:.2f} | "
                  f"{size / 1e6:.0f} | {size / 1e6 / k:.0f} |", flush=True)
    finally:
        if not args.out:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
