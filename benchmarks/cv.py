"""Wall time of a K-fold cross-validation (`medclf cv`, one decoded-image cache for every fold)
against K single runs (`medclf train` + `medclf test` per fold, each decoding its own images).

    python benchmarks/cv.py [--data-root ../shared/data/brain_mri] [--folds 5] [--epochs 2]
        [--img-size 64] [--arch resnet18] [--threads 1] [--order cv-first|singles-first]

Partitions the data once (--folds K, not timed), then runs back to back, in one process:
(a) `medclf cv` on the K folds: trains K runs, predicts out-of-fold and test, writes the CV outputs;
(b) the same K folds as K single runs: `medclf train` on each fold's splits.csv, then `medclf test`.
Both train the same models (same splits, seed, epochs; --deterministic). Decoding time is the
time spent in medclf.data.datasets.build_cache, counted by wrapping it here (the benchmark only).
Prints wall time and decoding time of each and the ratio (b) / (a).
"""

import argparse
import tempfile
import time
from pathlib import Path

from medclf.core.splits import read_splits
from medclf.data import datasets as data_mod
from medclf.infer.predict import run_test
from medclf.prepare.partition import PartitionOptions, partition
from medclf.train.training import run_training
from medclf.workflows.cv import run_cv, write_fold_splits

REPO = Path(__file__).resolve().parents[1]


class DecodeTimer:
    """Wraps data.build_cache to add up the seconds and images it decodes."""

    def __init__(self):
        self.seconds, self.images, self.calls = 0.0, 0, 0
        self.real = data_mod.build_cache

    def __call__(self, paths, *args, **kwargs):
        started = time.perf_counter()
        try:
            return self.real(paths, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started
            self.images += len(paths)
            self.calls += 1

    def __enter__(self):
        data_mod.build_cache = self
        return self

    def __exit__(self, *exc):
        data_mod.build_cache = self.real


def train_config(args, splits, out, name):
    return {"splits": str(splits), "arch": args.arch, "img_size": args.img_size, "epochs": args.epochs,
            "patience": args.epochs, "batch_size": 32, "out": str(out), "run_name": name, "seed": 0,
            "deterministic": True, "progress": False, "device": "cpu", "threads": args.threads}


def time_cv(args, splits, out):
    with DecodeTimer() as decode:
        started = time.perf_counter()
        run_cv(train_config(args, splits, out, "cv"), repeats=1)
        return time.perf_counter() - started, decode


def time_singles(args, splits, out):
    table = read_splits(splits)
    with DecodeTimer() as decode:
        started = time.perf_counter()
        for fold in range(args.folds):
            fold_splits = write_fold_splits(table, 0, fold, out / "splits" / f"fold{fold}")
            summary = run_training(train_config(args, fold_splits, out, f"fold{fold}"))
            run_test(summary["run"], device="cpu", progress=False)
        return time.perf_counter() - started, decode


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "brain_mri")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--order", default="cv-first", choices=["cv-first", "singles-first"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        partition(PartitionOptions(out=tmp / "partition", data_root=args.data_root, folds=args.folds, quiet=True))
        splits = tmp / "partition" / "splits.csv"
        runs = {"cv": lambda: time_cv(args, splits, tmp / "cv"),
                "singles": lambda: time_singles(args, splits, tmp / "singles")}
        order = ["cv", "singles"] if args.order == "cv-first" else ["singles", "cv"]
        timed = {name: runs[name]() for name in order}
    print(f"{args.folds}-fold CV vs {args.folds} single runs: {args.data_root.name}, {args.arch} at {args.img_size} px, "
          f"{args.epochs} epoch(s) per fold, {args.threads} thread(s), order {args.order}")
    print(f"{'':28} {'wall s':>8} {'decoding s':>11} {'decoded images':>15} {'cache builds':>13}")
    for name, label in (("cv", "(a) medclf cv"), ("singles", "(b) train + test per fold")):
        wall, decode = timed[name]
        print(f"{label:28} {wall:8.1f} {decode.seconds:11.1f} {decode.images:15d} {decode.calls:13d}")
    print(f"ratio (b) / (a): {timed['singles'][0] / timed['cv'][0]:.2f}; decoding saved by the shared cache: "
          f"{timed['singles'][1].seconds - timed['cv'][1].seconds:.1f} s")


if __name__ == "__main__":
    main()
