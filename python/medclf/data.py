"""Datasets from splits.csv with a decode-once uint8 cache.

Each image of a split is read once per run through `medclf.imageio.read_image`, resized with
its aspect ratio kept (shorter side -> `side`), centre-cropped to `side` x `side` and stored as
uint8 (N, 3, side, side): in memory, or in a file-backed numpy memmap under the run folder for
large sets (reused by `medclf test` and `--resume` when the file list matches). Augmentation then
works on these small tensors, never on the original files.
"""

import hashlib
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from medclf import schemas
from medclf.errors import MedclfError, UnreadableImageError
from medclf.fileio import write_json
from medclf.imageio import read_image
from medclf.preprocess import resize_and_crop  # torch-free, shared with medclf.onnx_model

MEMORY_CACHE_LIMIT_BYTES = 1 << 30  # --cache auto: memory below 1 GiB, memmap above


def _decode(path, side):
    try:
        img = read_image(path)
    except UnreadableImageError as exc:
        raise MedclfError(
            f"{path}: cannot read image ({exc.reason}); remove it from splits.csv "
            "(re-run `medclf partition`, which excludes unreadable files)"
        ) from exc
    return np.asarray(resize_and_crop(img, side), dtype=np.uint8).transpose(2, 0, 1)


def _file_list_key(paths, side):
    digest = hashlib.sha256()
    for p in paths:
        digest.update(str(p).encode("utf-8") + b"\0")
        try:
            stat = os.stat(p)
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        except OSError:
            pass
    digest.update(str(side).encode())
    return digest.hexdigest()


def build_cache(paths, side, mode="auto", cache_dir=None, name="cache", progress=True, threads=2):
    """Decode every file once into a uint8 array (N, 3, side, side).
    mode: memory | disk | auto (disk needs cache_dir)."""
    from tqdm import tqdm

    paths = [Path(p) for p in paths]
    n_bytes = len(paths) * 3 * side * side
    if mode == "auto":
        mode = "disk" if (n_bytes > MEMORY_CACHE_LIMIT_BYTES and cache_dir is not None) else "memory"
    if mode not in ("memory", "disk"):
        raise MedclfError(f"--cache {mode}: use memory, disk or auto")
    if mode == "disk":
        if cache_dir is None:
            raise MedclfError("--cache disk needs a run folder to hold the cache file")
        cache_dir = Path(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        data_file, meta_file = cache_dir / f"{name}.npy", cache_dir / f"{name}.json"
        key = _file_list_key(paths, side)
        if data_file.is_file() and meta_file.is_file():
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            if meta.get("key") == key and meta.get("complete"):
                return np.load(data_file, mmap_mode="r")
        meta_file.unlink(missing_ok=True)
        array = np.lib.format.open_memmap(data_file, mode="w+", dtype=np.uint8, shape=(len(paths), 3, side, side))
    else:
        array = np.empty((len(paths), 3, side, side), dtype=np.uint8)
    # PIL releases the GIL while decoding, so two threads use both cores.
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        bar = tqdm(total=len(paths), desc=f"cache {name} {side}px", unit="img", disable=not progress, leave=False)
        for i, pixels in enumerate(pool.map(lambda p: _decode(p, side), paths)):
            array[i] = pixels
            bar.update()
        bar.close()
    if mode == "disk":
        array.flush()
        del array
        write_json(meta_file, {"schema": schemas.CACHE, "key": key, "n": len(paths), "side": side, "complete": True})
        return np.load(data_file, mmap_mode="r")
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
