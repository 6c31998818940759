"""Training throughput on brain_mri: compute bound vs medclf's data path vs the original's loop, per precision.

    python benchmarks/train_throughput.py [--data-root ../shared/data/brain_mri] [--img-size 224]
        [--arch resnet18] [--batch-size 32] [--epochs 4] [--augment flip] [--workers 0] [--threads 2]
        [--precision both|fp32|amp]
    python benchmarks/train_throughput.py --device cuda [--sizes 224 384] [--archs resnet50 efficientnet_b0]

CPU (default):
(a) forward + backward on random tensors already in memory (the compute bound);
(b) training epochs through medclf's data path (decode-once uint8 cache + transforms.v2 + DataLoader);
    the first epoch includes building the cache;
(c) the seed-002 loop: every epoch opens, converts and resizes each file with PIL (fp32).
(a) and (b) run in fp32 and, where the CPU has native bf16, in bf16 with channels_last (medclf's
--amp, medclf.engine.precision), so the compute bound is measured for each precision. All loops run
interleaved, one epoch each per round (the CPU may be shared). Prints images/s per loop and
precision (median of the rounds after the first), the ratios b/a per precision, b/c, and bf16/fp32.
Targets: b/a >= 0.85, b/c >= 1.5.

--device cuda: for each architecture and size, (a) random tensors already on the GPU and (b)
medclf's data path to the GPU (medclf.data.device_data: the uint8 cache on the device, augmented
there, or pinned memory when it does not fit), both in the precision medclf picks there (bf16, or
fp16 with a gradient scaler) with channels_last; prints images/s and b/a. Without CUDA it says so
in one line and exits 0.
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

from medclf.data import datasets as data
from medclf.data import device_data, transforms
from medclf.data.imageio import is_image_name
from medclf.engine.precision import choose_precision
from medclf.engine.steps import train_one_epoch
from medclf.models import architectures as models

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


def timed_epoch(setup, source, n_images):
    """One training epoch of `setup` (model, optimizer, precision, scaler) over `source`: images/s."""
    model, optimizer, precision, scaler = setup
    cuda = precision.device.type == "cuda"
    started = time.perf_counter()
    train_one_epoch(model, nn.CrossEntropyLoss(), optimizer, source, precision, scaler=scaler)
    if cuda:
        torch.cuda.synchronize()
    return images_per_second(n_images, time.perf_counter() - started)


def read_folder(root):
    """(files, labels, classes) of a folder of class subfolders."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files, labels = [], []
    for index, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if is_image_name(f):
                files.append(f)
                labels.append(index)
    return files, labels, classes


def random_batches(n, batch_size, size, n_classes, device="cpu"):
    g = torch.Generator().manual_seed(0)
    batches = []
    for start in range(0, n, batch_size):
        k = min(batch_size, n - start)
        batches.append((torch.randn(k, 3, size, size, generator=g).to(device),
                        torch.randint(0, n_classes, (k,), generator=g).to(device)))
    return batches


def medclf_loader(files, labels, augment, size, batch_size, workers):
    """medclf's training loader (cache built here) and the seconds the cache took."""
    started = time.perf_counter()
    cache = data.build_cache(files, transforms.cache_side(augment, size), "memory", progress=False)
    cache_seconds = time.perf_counter() - started
    mean, std = data.channel_stats(cache)
    dataset = data.CachedImageDataset(cache, labels, transforms.train_transform(augment, size, mean, std))
    loader = data.make_loader(dataset, batch_size, shuffle=True, workers=workers,
                              generator=torch.Generator().manual_seed(0))
    return loader, cache_seconds


def training_setup(arch, n_classes, precision):
    """(model, optimizer, precision, scaler), the same initial weights every time."""
    torch.manual_seed(0)
    model, _ = models.build_model(arch, n_classes, "none")
    precision.prepare_model(model)
    return model, torch.optim.Adam(model.parameters(), lr=1e-4), precision, precision.grad_scaler()


def cpu_precisions(choice):
    """The precisions to measure on this CPU: fp32 and/or medclf's --amp choice (bf16 where supported)."""
    amp = choose_precision("cpu", True)
    if choice == "fp32" or (choice == "both" and not amp.amp):
        if choice == "both":
            print(f"bf16 not measured: {amp.reason}")
        return [choose_precision("cpu", False)]
    return [amp] if choice == "amp" else [choose_precision("cpu", False), amp]


def loading_only(sources, n):
    """Loading speed of each data path alone, without the model."""
    for label, source in sources.items():
        started = time.perf_counter()
        for _ in range(2):
            for _batch in source:
                pass
        print(f"({label}) data loading only: {images_per_second(2 * n, time.perf_counter() - started):7.1f} images/s",
              flush=True)


def cpu_main(args):
    files, labels, classes = read_folder(args.data_root)
    n = len(files)
    print(f"{n} images of {args.data_root} ({', '.join(classes)}), {args.arch} at {args.img_size} px, "
          f"batch {args.batch_size}, augment {args.augment}, workers {args.workers}, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    loader, cache_seconds = medclf_loader(files, labels, args.augment, args.img_size, args.batch_size, args.workers)
    naive = DataLoader(NaivePilDataset(files, labels, args.img_size), batch_size=args.batch_size, shuffle=True,
                       num_workers=args.workers)
    loading_only({"b": loader, "c": naive}, n)
    if args.epochs < 2:
        print("(--epochs below 2: loading speeds only)")
        return 0
    batches = random_batches(n, args.batch_size, args.img_size, len(classes))
    runs = {}
    for precision in cpu_precisions(args.precision):
        runs[("a", precision.name)] = (batches, training_setup(args.arch, len(classes), precision))
        runs[("b", precision.name)] = (loader, training_setup(args.arch, len(classes), precision))
    fp32 = choose_precision("cpu", False)
    runs[("c", "fp32")] = (naive, training_setup(args.arch, len(classes), fp32))
    rates = {key: [] for key in runs}
    for _ in range(args.epochs):  # interleaved: a change in machine load hits every loop alike
        for key, (source, setup) in runs.items():
            rates[key].append(timed_epoch(setup, source, n))
    report_cpu(rates, cache_seconds, n)
    return 0


def report_cpu(rates, cache_seconds, n):
    names = {"a": "(a) forward+backward on random tensors", "b": "(b) medclf data path", "c": "(c) naive PIL loop"}
    median = {key: statistics.median(r[1:]) for key, r in rates.items()}
    print(f"{'loop':<42} {'precision':<9} {'images/s':>9} {'first epoch':>12}")
    for (loop, name), r in rates.items():
        first = images_per_second(n, n / r[0] + cache_seconds) if loop == "b" else r[0]
        print(f"{names[loop]:<42} {name:<9} {median[(loop, name)]:9.1f} {first:12.1f}")
    print(f"(b) first epoch includes building the cache ({cache_seconds:.1f} s)")
    for name in sorted({name for _, name in rates}):
        print(f"{name}: b/a = {median[('b', name)] / median[('a', name)]:.2f} (target >= 0.85)   "
              f"b/c = {median[('b', name)] / median[('c', 'fp32')]:.2f} (target >= 1.5)")
    if ("a", "bf16") in median:
        print(f"bf16/fp32: compute bound {median[('a', 'bf16')] / median[('a', 'fp32')]:.2f}x, "
              f"data path {median[('b', 'bf16')] / median[('b', 'fp32')]:.2f}x")


def cuda_main(args):
    if not torch.cuda.is_available():
        print("--device cuda: CUDA is not available here (torch.cuda.is_available() is False); nothing measured")
        return 0
    files, labels, classes = read_folder(args.data_root)
    n = len(files)
    precision = choose_precision("cuda", True)
    torch.backends.cudnn.benchmark = True
    print(f"{n} images of {args.data_root}, {torch.cuda.get_device_name()}, {precision.name} ({precision.reason}), "
          f"channels_last, batch {args.batch_size}, augment {args.augment}, {args.epochs} rounds", flush=True)
    print(f"{'architecture':<16} {'size':>5} {'(a) compute img/s':>18} {'(b) data path img/s':>20} {'b/a':>5}  path")
    for size in args.sizes:
        loader, _ = medclf_loader(files, labels, args.augment, size, args.batch_size, args.workers)
        source = device_data.for_device(loader, "cuda")
        batches = random_batches(n, args.batch_size, size, len(classes), "cuda")
        for arch in args.archs:
            runs = {"a": batches, "b": source}
            setups = {key: training_setup(arch, len(classes), precision) for key in runs}
            rates = {key: [] for key in runs}
            for _ in range(args.epochs):
                for key in runs:
                    rates[key].append(timed_epoch(setups[key], runs[key], n))
            a, b = (statistics.median(rates[k][1:]) for k in ("a", "b"))
            path = "device cache" if isinstance(source, device_data.DeviceBatches) else "pinned memory"
            print(f"{arch:<16} {size:5d} {a:18.1f} {b:20.1f} {b / a:5.2f}  {path}", flush=True)
            del setups
            torch.cuda.empty_cache()
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "brain_mri")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: the GPU mode (see above)")
    parser.add_argument("--img-size", type=int, default=224, help="CPU mode: input size")
    parser.add_argument("--arch", default="resnet18", help="CPU mode: architecture")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 384], help="--device cuda: input sizes")
    parser.add_argument("--archs", nargs="+", default=["resnet50", "efficientnet_b0"],
                        help="--device cuda: architectures")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4,
                        help="rounds (one epoch of each loop per round); the first is reported apart")
    parser.add_argument("--augment", default="flip", choices=transforms.PRESETS)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--precision", default="both", choices=["both", "fp32", "amp"],
                        help="CPU mode: fp32, medclf's --amp choice (bf16 where supported), or both")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return cuda_main(args) if args.device == "cuda" else cpu_main(args)


if __name__ == "__main__":
    sys.exit(main())
