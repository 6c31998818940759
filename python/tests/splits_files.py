"""Small splits files cut from a real one, so short tests still read real images (shared, not copied)."""

from pathlib import Path

import pandas as pd

from medclf.core.fileio import read_json, write_json
from medclf.core.splits import read_splits, write_splits_csv

DEFAULT_PER_CLASS = {"train": 24, "val": 8, "test": 8}


def subset_splits(full_splits, out, per_class=None, drop_val=0):
    """The first `per_class[split]` images of each class of each split of a real splits.csv (default
    DEFAULT_PER_CLASS), less the last `drop_val` val rows (an odd val split: two processes then need
    one image of padding); partition.json is copied beside it."""
    table = read_splits(full_splits)
    frame = pd.concat([table.rows(s).groupby("label", sort=True).head(n)
                       for s, n in (per_class or DEFAULT_PER_CLASS).items()], ignore_index=True)
    if drop_val:
        frame = frame.drop(frame.index[frame["split"] == "val"][-drop_val:])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_splits_csv(out / "splits.csv", frame)
    write_json(out / "partition.json", read_json(Path(full_splits).parent / "partition.json"))
    return out / "splits.csv"
