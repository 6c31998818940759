"""The decode step and the shared, content-keyed disk cache (no torch here: the processes that
build a cache import only this module, numpy and PIL).

A cache is one folder ROOT/<key[:32]>/ per (file contents in order, preprocessing, side):
  images.npy    uint8 (N, 3, side, side), a numpy file opened memory-mapped by every reader
  done.npy      one byte per chunk of CHUNK_IMAGES images, set once the chunk is written and flushed
  building.json the layout being built (key, n, side, chunk); cache.json once complete
  .lock         flock held while building, so concurrent runs and ranks never build twice
ROOT/file_sha256.json memoises each file's SHA-256 by (path, size, mtime in ns).
"""

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from medclf.core import schemas
from medclf.core.errors import MedclfError, UnreadableImageError
from medclf.core.fileio import sha256_file, write_json
from medclf.data.imageio import read_image
from medclf.data.preprocess import resize_and_crop


def decode(path, side):
    """One image file as uint8 (3, side, side); an unreadable file is an error naming it."""
    try:
        img = read_image(path)
    except UnreadableImageError as exc:
        raise MedclfError(
            f"{path}: cannot read image ({exc.reason}); remove it from splits.csv "
            "(re-run `medclf partition`, which excludes unreadable files)"
        ) from exc
    return np.asarray(resize_and_crop(img, side), dtype=np.uint8).transpose(2, 0, 1)


PREPROCESSING = "resize_and_crop/1: shorter side to SIDE (PIL bilinear, reducing_gap None), centre square, uint8 RGB"
CHUNK_IMAGES = 256  # images per unit of work: what an interrupted build redoes at most, per worker
HASH_MEMO = "file_sha256.json"


def content_hashes(paths, root, remember=True):
    """SHA-256 of each file's bytes. A memo in `root` (path, size, mtime in ns -> hash) spares
    re-reading files that did not change since they were hashed, so later runs and the other
    processes of a run only stat them; any write to a file changes its mtime and it is re-read.
    remember=False reads the memo but writes nothing (a check that may refuse the command)."""
    memo_path = Path(root) / HASH_MEMO
    memo = _read_memo(memo_path)
    hashes, changed = [], False
    for path in paths:
        stat = os.stat(path)
        entry = memo.get(str(path.resolve()))
        if entry and entry[:2] == [stat.st_size, stat.st_mtime_ns]:
            hashes.append(entry[2])
            continue
        digest = sha256_file(path)
        memo[str(path.resolve())] = [stat.st_size, stat.st_mtime_ns, digest]
        hashes.append(digest)
        changed = True
    if changed and remember:
        write_json(memo_path, memo, indent=None)
    return hashes


def _read_memo(path):
    try:
        memo = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # absent or damaged: it is only a memo, the files are hashed again
    return memo if isinstance(memo, dict) else {}


def cache_key(hashes, side):
    """The cache's identity: the ordered file contents and the preprocessing (side included)."""
    digest = hashlib.sha256(f"{schemas.CACHE}\n{PREPROCESSING}\nside={side}\n".encode())
    for h in hashes:
        digest.update(h.encode() + b"\n")
    return digest.hexdigest()


def shared_cache(paths, side, root, name="cache", progress=True, workers=0):
    """The memory-mapped cache of `paths` at `side` under `root`/<key>/ (images.npy), built once and
    then mapped by every process and later run that asks for the same file contents and
    preprocessing. Building holds a lock (root/<key>/.lock), so concurrent runs and the processes of
    one run never build it twice; an interrupted build resumes at its first unfinished chunk."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(content_hashes(paths, root), side)
    folder = root / key[:32]
    folder.mkdir(exist_ok=True)
    images, meta_file = folder / "images.npy", folder / "cache.json"
    with _exclusive_lock(folder / ".lock"):
        if not _is_complete(meta_file, key):
            _build_chunks(paths, side, folder, key, name, progress, workers)
            write_json(meta_file, {"schema": schemas.CACHE, "key": key, "n": len(paths), "side": side,
                                   "preprocessing": PREPROCESSING, "complete": True})
    return np.load(images, mmap_mode="r")


def _is_complete(meta_file, key):
    return _meta_matches(meta_file, key=key, complete=True)


def _meta_matches(meta_file, **expected):
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and all(meta.get(k) == v for k, v in expected.items())


@contextlib.contextmanager
def _exclusive_lock(path):
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released by the OS if this process dies
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_chunks(paths, side, folder, key, name, progress, workers):
    """Fill images.npy chunk by chunk; done.npy marks each chunk written and flushed, so a build
    killed at any point redoes at most the chunks in flight."""
    from tqdm import tqdm

    images, done_file, progress_file = folder / "images.npy", folder / "done.npy", folder / "building.json"
    chunks = [(start, paths[start:start + CHUNK_IMAGES]) for start in range(0, len(paths), CHUNK_IMAGES)]
    layout = {"key": key, "n": len(paths), "side": side, "chunk": CHUNK_IMAGES}
    if not (images.is_file() and done_file.is_file() and _meta_matches(progress_file, **layout)):
        np.lib.format.open_memmap(images, mode="w+", dtype=np.uint8, shape=(len(paths), 3, side, side)).flush()
        np.lib.format.open_memmap(done_file, mode="w+", dtype=np.uint8, shape=(len(chunks),)).flush()
        write_json(progress_file, {"schema": schemas.CACHE, **layout})  # written last: the files above exist
    done = np.load(done_file, mmap_mode="r+")
    todo = [i for i in range(len(chunks)) if not done[i]]
    bar = tqdm(total=len(paths), initial=len(paths) - sum(len(chunks[i][1]) for i in todo),
               desc=f"cache {name} {side}px", unit="img", disable=not progress)
    for i in _run_chunks([(images, *chunks[i], side) for i in todo], todo, workers):
        done[i] = 1
        done.flush()
        bar.update(len(chunks[i][1]))
    bar.close()


def _run_chunks(tasks, indices, workers):
    """Yield the index of each chunk once written: in this process, or in `workers` processes
    started with spawn (fresh interpreters: forking a process that runs torch's and OpenCV's
    thread pools can deadlock the children)."""
    if workers <= 1 or len(tasks) <= 1:
        for index, task in zip(indices, tasks):
            _write_chunk(*task)
            yield index
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_write_chunk, *task): index for index, task in zip(indices, tasks)}
        try:
            for future in as_completed(futures):
                future.result()
                yield futures[future]
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # an unreadable image: stop, keep what is done
            raise


def _write_chunk(images_file, start, paths, side):
    """Decode `paths` into rows start.. of the memory-mapped images file and flush them."""
    images = np.load(images_file, mmap_mode="r+")
    for offset, path in enumerate(paths):
        images[start + offset] = decode(path, side)
    images.flush()
