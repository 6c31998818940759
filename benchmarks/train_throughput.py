"""Training throughput on brain_mri: compute bound vs medclf's data path vs the original's loop.

    python benchmarks/train_throughput.py [--data-root ../shared/data/brain_mri] [--img-size 224]
        [--arch resnet18] [--batch-size 32] [--epochs 3] [--augment flip] [--workers 0] [--threads 2]

(a) forward + backward on random tensors already in memory (the compute bound);
(b) training epochs through medclf's data path (decode-once uint8 cache + transforms.v2 + DataLoader);
    the first epoch includes building the cache;
(c) the seed-002 loop: every epoch opens, converts and resizes each file with PIL.
Prints images/s for each and the ratios b/a and b/c (b and c after their first epoch), and
the loading speed of (b) and (c) alone, without the model.
Targets: b/a >= 0.85, b/c >= 1.5.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medclf import data, models, transforms
from medclf.engine import train_one_epoch
from medclf.imageio import is_image_name

REPO = Path(__file__).resolve().parents[1]


class NaivePilDataset(Dataset):
    """What the original train_torchvision.py does per item: open, RGB, resize to (H, W), ToTensor."""

    def __init__(self, files, labels, size):
        self.files, self.labels, self.size = files, labels, size

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        with Image.open(self.files[index]) as img:
            pixels = img.convert("RGB").resize((self.size, self.size))
        tensor = torch.frombuffer(bytearray(pixels.tobytes()), dtype=torch.uint8)
        tensor = tensor.reshape(self.size, self.size, 3).permute(2, 0, 1).float().div_(255)
        return tensor, self.labels[index]


def images_per_second(n_images, seconds):
    return n_images / seconds if seconds > 0 else float("nan")


def timed_epochs(model, loader, epochs, n_images, optimizer):
    criterion = nn.CrossEntropyLoss()
    rates = []
    for _ in range(epochs):
        started = time.perf_counter()
        train_one_epoch(model, criterion, optimizer, loader, torch.device("cpu"))
        rates.append(images_per_second(n_images, time.perf_counter() - started))
    return rates


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "brain_mri")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4, help="rounds (one epoch of each loop per round); the first is reported apart")
    parser.add_argument("--augment", default="flip", choices=transforms.PRESETS)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    classes = sorted(p.name for p in args.data_root.iterdir() if p.is_dir())
    files, labels = [], []
    for index, name in enumerate(classes):
        for f in sorted((args.data_root / name).iterdir()):
            if is_image_name(f):
                files.append(f)
                labels.append(index)
    n = len(files)
    print(f"{n} images of {args.data_root} ({', '.join(classes)}), {args.arch} at {args.img_size} px, "
          f"batch {args.batch_size}, augment {args.augment}, workers {args.workers}, "
          f"torch threads {torch.get_num_threads()}", flush=True)

    def fresh_model():
        torch.manual_seed(0)
        model, _ = models.build_model(args.arch, len(classes), "none")
        return model, torch.optim.Adam(model.parameters(), lr=1e-4)

    # The three loops run interleaved, one epoch each per round, so a change in machine load
    # (the CPU is shared) hits all three alike.
    # (a) compute bound: the same number of images per epoch, already tensors in memory.
    g = torch.Generator().manual_seed(0)
    batches = []
    for start in range(0, n, args.batch_size):
        size = min(args.batch_size, n - start)
        batches.append((torch.randn(size, 3, args.img_size, args.img_size, generator=g),
                        torch.randint(0, len(classes), (size,), generator=g)))
    # (b) medclf: cache once (timed as part of its first epoch), then augment from the cache.
    started = time.perf_counter()
    cache = data.build_cache(files, transforms.cache_side(args.augment, args.img_size), "memory", progress=False)
    cache_seconds = time.perf_counter() - started
    mean, std = data.channel_stats(cache)
    dataset = data.CachedImageDataset(cache, labels, transforms.train_transform(args.augment, args.img_size, mean, std))
    loader = data.make_loader(dataset, args.batch_size, shuffle=True, workers=args.workers,
                              generator=torch.Generator().manual_seed(0))
    # (c) the original's loop: decode and resize every file in every epoch.
    naive = DataLoader(NaivePilDataset(files, labels, args.img_size), batch_size=args.batch_size, shuffle=True,
                       num_workers=args.workers)
    # Loading alone (no model): what each data path costs per image.
    for label, source in (("b", loader), ("c", naive)):
        started = time.perf_counter()
        for _ in range(2):
            for _batch in source:
                pass
        print(f"({label}) data loading only: {images_per_second(2 * n, time.perf_counter() - started):7.1f} images/s",
              flush=True)
    if args.epochs < 2:
        print("(--epochs below 2: loading speeds only)")
        return 0
    runs = {"a": (batches, fresh_model()), "b": (loader, fresh_model()), "c": (naive, fresh_model())}
    rates = {key: [] for key in runs}
    for _ in range(args.epochs):
        for key, (source, (model, optimizer)) in runs.items():
            rates[key] += timed_epochs(model, source, 1, n, optimizer)
    rate_a = statistics.median(rates["a"][1:])
    rate_b = statistics.median(rates["b"][1:])
    rate_c = statistics.median(rates["c"][1:])
    first_b = images_per_second(n, n / rates["b"][0] + cache_seconds)
    print(f"(a) forward+backward on random tensors: {rate_a:7.1f} images/s (first epoch {rates['a'][0]:.1f})")
    print(f"(b) medclf data path: first epoch {first_b:7.1f} images/s (cache {cache_seconds:.1f} s), "
          f"then {rate_b:7.1f} images/s")
    print(f"(c) naive PIL loop: first epoch {rates['c'][0]:7.1f} images/s, then {rate_c:7.1f} images/s")
    print(f"b/a = {rate_b / rate_a:.2f} (target >= 0.85)   b/c = {rate_b / rate_c:.2f} (target >= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
