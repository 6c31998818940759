"""The decode-once cache: resize/crop geometry, memory vs disk, the shared content-keyed disk
cache (reuse, key, resume, worker processes), stats, loaders."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medclf.core.errors import MedclfError
from medclf.data import datasets as data
from medclf.data import image_cache
from medclf.data.preprocess import resize_and_crop


def two_tone(path, size=(200, 100)):
    """Left eighth red, the rest blue: after a centre crop only blue may remain."""
    img = Image.new("RGB", size, (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, size[0] // 8, size[1]))
    img.save(path)
    return path


def test_resize_keeps_aspect_ratio_then_crops_the_centre(tmp_path):
    img = Image.open(two_tone(tmp_path / "a.png"))
    out = resize_and_crop(img, 50)  # 200x100 -> 100x50 -> crop x 25..75
    assert out.size == (50, 50)
    pixels = np.asarray(out)
    assert (pixels[..., 2] == 255).all() and (pixels[..., 0] == 0).all()


def test_memory_and_disk_caches_hold_the_same_pixels(tmp_path):
    paths = [two_tone(tmp_path / f"{i}.png", (60 + 20 * i, 40)) for i in range(3)]
    memory = data.build_cache(paths, 16, "memory", progress=False)
    disk = data.build_cache(paths, 16, "disk", tmp_path / "cache", "train", progress=False)
    assert memory.shape == (3, 3, 16, 16) and memory.dtype == np.uint8
    assert isinstance(disk, np.memmap) and np.array_equal(memory, np.asarray(disk))


REAL_DECODE = image_cache.decode


class Interrupted(Exception):
    pass


def counting_decode(monkeypatch, fail_at=None):
    """Record each image the cache decodes (in this process); fail on decode number `fail_at`
    (an interruption injected from outside: what is on disk is what a kill would leave, since
    every finished chunk is flushed before it is marked done)."""
    decoded = []

    def decode(path, side):
        if fail_at is not None and len(decoded) + 1 == fail_at:
            raise Interrupted
        decoded.append(Path(path).name)
        return REAL_DECODE(path, side)

    monkeypatch.setattr(image_cache, "decode", decode)
    return decoded


def cache_folders(root):
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir())


def test_disk_cache_is_shared_by_later_builds_of_the_same_contents_and_size(tmp_path, monkeypatch):
    paths = [two_tone(tmp_path / f"{i}.png", (60 + 20 * i, 40)) for i in range(3)]
    first = data.build_cache(paths, 8, "disk", tmp_path / "c", "train", progress=False)
    decoded = counting_decode(monkeypatch)
    renamed = [tmp_path / "copy0.png", *paths[1:]]
    renamed[0].write_bytes(paths[0].read_bytes())  # same bytes under another name: same cache
    again = data.build_cache(renamed, 8, "disk", tmp_path / "c", "val", progress=False)
    assert decoded == [] and len(cache_folders(tmp_path / "c")) == 1
    assert np.array_equal(np.asarray(first), np.asarray(again))
    data.build_cache(paths[:2], 8, "disk", tmp_path / "c", "train", progress=False)  # another file list
    data.build_cache(paths, 12, "disk", tmp_path / "c", "train", progress=False)  # another size
    assert decoded == ["0.png", "1.png"] + ["0.png", "1.png", "2.png"] and len(cache_folders(tmp_path / "c")) == 3


def test_the_cache_key_changes_when_one_file_changes_its_bytes_or_the_size_changes(tmp_path):
    paths = [two_tone(tmp_path / f"{i}.png") for i in range(3)]
    key = image_cache.cache_key(image_cache.content_hashes(paths, tmp_path), 16)
    assert image_cache.cache_key(image_cache.content_hashes(paths, tmp_path), 16) == key
    assert image_cache.cache_key(image_cache.content_hashes(paths, tmp_path), 17) != key
    Image.new("RGB", (200, 100), (0, 255, 0)).save(paths[1])  # one file rewritten with other pixels
    assert image_cache.cache_key(image_cache.content_hashes(paths, tmp_path), 16) != key


def test_a_changed_file_gives_a_new_cache_with_its_new_pixels(tmp_path):
    paths = [two_tone(tmp_path / f"{i}.png") for i in range(2)]
    data.build_cache(paths, 8, "disk", tmp_path / "c", "train", progress=False)
    Image.new("RGB", (200, 100), (0, 255, 0)).save(paths[1])
    cache = data.build_cache(paths, 8, "disk", tmp_path / "c", "train", progress=False)
    assert len(cache_folders(tmp_path / "c")) == 2
    assert (cache[1, 1] == 255).all() and (cache[1, 0] == 0).all() and (cache[1, 2] == 0).all()


def test_an_interrupted_build_resumes_at_its_first_unfinished_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(image_cache, "CHUNK_IMAGES", 2)
    paths = [two_tone(tmp_path / f"{i}.png", (60 + 20 * i, 40)) for i in range(5)]
    counting_decode(monkeypatch, fail_at=4)  # chunk [0, 1] done, chunk [2, 3] interrupted at image 3
    with pytest.raises(Interrupted):
        data.build_cache(paths, 8, "disk", tmp_path / "c", "train", progress=False)
    decoded = counting_decode(monkeypatch)
    cache = data.build_cache(paths, 8, "disk", tmp_path / "c", "train", progress=False)
    assert decoded == ["2.png", "3.png", "4.png"]
    assert np.array_equal(np.asarray(cache), data.build_cache(paths, 8, "memory", progress=False))


def test_worker_processes_build_the_same_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(image_cache, "CHUNK_IMAGES", 2)
    paths = [two_tone(tmp_path / f"{i}.png", (60 + 20 * i, 40)) for i in range(5)]
    cache = data.build_cache(paths, 8, "disk", tmp_path / "c", "train", progress=False, workers=2)
    assert np.array_equal(np.asarray(cache), data.build_cache(paths, 8, "memory", progress=False))


def test_channel_stats_hand_values():
    cache = np.zeros((2, 3, 2, 2), dtype=np.uint8)
    cache[1] = 255
    cache[:, 2] = 51  # channel 2 constant 1/5
    mean, std = data.channel_stats(cache)
    assert mean == pytest.approx([1 / 2, 1 / 2, 1 / 5])
    assert std == pytest.approx([1 / 2, 1 / 2, 0], abs=1e-6)


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(MedclfError, match="broken.jpg"):
        data.build_cache([bad], 8, "memory", progress=False)


def test_real_brain_mri_images_of_every_mode_become_rgb_squares(brain_mri_root):
    files = sorted((brain_mri_root / "no").iterdir())[:6] + sorted((brain_mri_root / "yes").iterdir())[:6]
    cache = data.build_cache([f for f in files if f.suffix.lower() in (".jpg", ".jpeg", ".png")], 32, "memory",
                             progress=False)
    assert cache.shape[1:] == (3, 32, 32) and cache.max() > 0


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_order_and_augmentation_repeat_for_the_same_generator_seed(workers):
    cache = (np.arange(10 * 3 * 8 * 8) % 256).astype(np.uint8).reshape(10, 3, 8, 8)

    def random_noise(x):
        return x.float() + torch.rand(())

    dataset = data.CachedImageDataset(cache, list(range(10)), random_noise)

    def one_epoch(seed):
        torch.manual_seed(seed)
        loader = data.make_loader(dataset, 4, shuffle=True, workers=workers,
                                  generator=torch.Generator().manual_seed(seed))
        return [(x.sum().item(), y.tolist()) for x, y in loader]

    assert one_epoch(1) == one_epoch(1)
    assert one_epoch(1) != one_epoch(2)
