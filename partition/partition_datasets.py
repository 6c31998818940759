#!/usr/bin/env python3
"""Seed 002's partition step with its original flags, done without leakage.

    python partition/partition_datasets.py -proj_dir DIR [-val_test_prop 0.1] [-num_classes 2] [-seed 0]

DIR holds one folder per class (no/ and yes/ for the brain-MRI study). Writes into DIR:
  splits.csv, partition.json  medclf's split (grouped by duplicate cluster, stratified, seeded);
  train.csv, val.csv, test.csv  seed 002's headerless `filename,class_idx` lists (0 = no, 1 = yes),
                                which `organize/organize_files.sh DIR` files under DIR/csv/.
Differences from the original: -val_test_prop is the fraction of ALL images for val and again
for test (the original took test from what val left, so test came out slightly smaller); the
split is seeded (-seed, default 0); exact and near duplicates never cross splits.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))

from medclf.core.errors import MedclfError  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-proj_dir", type=Path, required=True, help="project folder with one folder per class")
    parser.add_argument("-val_test_prop", type=float, default=0.1, help="fraction of images for val, and for test")
    parser.add_argument("-num_classes", type=int, default=2, help="number of class folders expected")
    parser.add_argument("-seed", type=int, default=0, help="random seed")
    parser.add_argument("-overwrite", action="store_true",
                        help="replace an existing, different split in DIR (refused without it)")
    args = parser.parse_args(argv)
    try:
        from medclf.core.splits import read_splits
        from medclf.prepare.organize import write_seed002_split_csvs
        from medclf.prepare.partition import PartitionOptions, partition

        proj = args.proj_dir
        if not proj.is_dir():
            raise MedclfError(f"{proj}: folder not found; pass -proj_dir, the folder with one folder per class")
        class_dirs = sorted(d.name for d in proj.iterdir() if d.is_dir() and d.name not in
                            ("bin", "csv", "models", "results") and not d.name.startswith(".")) if proj.is_dir() else []
        classes = ["no", "yes"] if args.num_classes == 2 and set(class_dirs) >= {"no", "yes"} else None
        if args.num_classes != len(class_dirs if classes is None else classes):
            raise MedclfError(f"{proj}: -num_classes {args.num_classes} but found class folder(s) "
                              f"{', '.join(class_dirs) or 'none'}; pass the matching -num_classes")
        partition(PartitionOptions(out=proj, data_root=proj, val=args.val_test_prop, test=args.val_test_prop,
                                   seed=args.seed, classes=classes, overwrite=args.overwrite))
        write_seed002_split_csvs(read_splits(proj / "splits.csv"), proj)
        print(f"wrote {proj / 'train.csv'}, {proj / 'val.csv'}, {proj / 'test.csv'} (filename,class_idx)")
    except MedclfError as exc:
        print(f"partition_datasets.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
