"""Datasets from splits.csv with a decode-once uint8 cache.

Each image of a split is read once per run through `medclf.data.imageio.read_image`, resized with
its aspect ratio kept (shorter side -> `side`), centre-cropped to `side` x `side` and stored as
uint8 (N, 3, side, side): in memory, or for large sets and several processes in a shared
memory-mapped file keyed by the files' contents and the preprocessing (`shared_cache`), which
every process of a run, `medclf test`, `--resume` and later runs on the same images map instead
of decoding again. Augmentation then works on these small tensors, never on the original files.
"""

import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medclf.core.errors import MedclfError
from medclf.data.image_cache import decode, shared_cache

MEMORY_CACHE_LIMIT_BYTES = 1 << 30  # --cache auto: memory below 1 GiB, memmap above


def cache_root(cache_dir, out_dir):
    """Where the shared image caches live: --cache-dir, else OUT/image-cache (runs under one --out share it)."""
    return Path(cache_dir) if cache_dir else Path(out_dir) / "image-cache"


def resolve_cache_workers(workers):
    """--cache-workers auto: one decoding process per CPU core, at most 8."""
    if workers in (None, "auto"):
        return min(8, os.cpu_count() or 1)
    try:
        workers = int(workers)
    except ValueError:
        raise MedclfError(f"--cache-workers {workers}: give a number or auto") from None
    if workers < 0:
        raise MedclfError(f"--cache-workers {workers}: must be 0 (decode in this process) or more")
    return workers


def build_cache(paths, side, mode="auto", cache_dir=None, name="cache", progress=True, threads=2, workers=0):
    """Decode every file once into a uint8 array (N, 3, side, side).
    mode: memory | disk | auto (disk above MEMORY_CACHE_LIMIT_BYTES; disk needs cache_dir).
    disk: the shared memory-mapped cache under `cache_dir` (see `shared_cache`), built with
    `workers` processes."""
    paths = [Path(p) for p in paths]
    n_bytes = len(paths) * 3 * side * side
    if mode == "auto":
        mode = "disk" if (n_bytes > MEMORY_CACHE_LIMIT_BYTES and cache_dir is not None) else "memory"
    if mode not in ("memory", "disk"):
        raise MedclfError(f"--cache {mode}: use memory, disk or auto")
    if mode == "disk":
        if cache_dir is None:
            raise MedclfError("--cache disk needs a folder to hold the cache file (--cache-dir)")
        return shared_cache(paths, side, cache_dir, name, progress, workers)
    return _memory_cache(paths, side, name, progress, threads)


def _memory_cache(paths, side, name, progress, threads):
    from tqdm import tqdm

    array = np.empty((len(paths), 3, side, side), dtype=np.uint8)
    # PIL releases the GIL while decoding, so two threads use both cores.
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        bar = tqdm(total=len(paths), desc=f"cache {name} {side}px", unit="img", disable=not progress, leave=False)
        for i, pixels in enumerate(pool.map(lambda p: decode(p, side), paths)):
            array[i] = pixels
            bar.update()
        bar.close()
    return array


def channel_stats(cache):
    """Per-channel mean and std (of pixel values scaled to [0, 1]) over a uint8 cache."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for start in range(0, len(cache), 256):
        block = np.asarray(cache[start:start + 256], dtype=np.float64) / 255.0
        total += block.sum(axis=(0, 2, 3))
        total_sq += (block ** 2).sum(axis=(0, 2, 3))
        count += block.shape[0] * block.shape[2] * block.shape[3]
    if count == 0:
        raise MedclfError("the train split is empty; cannot compute normalisation statistics")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
    return [float(x) for x in mean], [float(x) for x in std]


class CachedImageDataset(Dataset):
    """(image tensor, label index) pairs from a uint8 cache and a transform."""

    def __init__(self, cache, labels, transform):
        self.cache = cache
        self.labels = [int(x) for x in labels]
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = torch.from_numpy(np.array(self.cache[index], copy=True))
        return self.transform(image), self.labels[index]


def seed_worker(worker_id):
    """Seed numpy and random in each DataLoader worker from torch's per-worker seed, which the
    loader derives from its (per-epoch re-seeded) generator."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset, batch_size, shuffle=False, sampler=None, workers=0, generator=None, drop_last=False):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        worker_init_fn=seed_worker if workers > 0 else None,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=False,
    )


def split_paths(table, split):
    rows = table.rows(split)
    return [table.resolve(p) for p in rows["path"]], rows["label_index"].astype(int).tolist(), list(rows["path"])
