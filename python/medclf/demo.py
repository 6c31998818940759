"""The demo pipeline on generated data (no download needed).

`run_demo` runs the stages one after another in separate steps, so later stages (train, test,
report) can be appended as further steps without touching the earlier ones.
"""

from pathlib import Path

from medclf import demo_data
from medclf.organize import organize
from medclf.partition import PartitionOptions, partition


def step_generate(out_dir, n_per_class, seed):
    data = Path(out_dir) / "data"
    paths = demo_data.generate(data, n_per_class=n_per_class, seed=seed)
    print(f"[demo] 1. generated {len(paths)} synthetic MRI-like images in {data} (classes no, yes)")
    return data


def step_partition(out_dir, data, seed, quiet=False):
    folder = Path(out_dir) / "partition"
    info = partition(PartitionOptions(out=folder, data_root=data, val=0.2, test=0.2, seed=seed,
                                      classes=list(demo_data.CLASSES), positive="yes", quiet=quiet))
    print(f"[demo] 2. partitioned into {folder / 'splits.csv'} (+ partition.json)")
    return folder, info


def step_organize(out_dir, partition_dir, quiet=False):
    folder = Path(out_dir) / "organized"
    organize(partition_dir / "splits.csv", folder, mode="link", layout="imagefolder", quiet=quiet)
    print(f"[demo] 3. organized as {folder}/<split>/<class>/ (hard links)")
    return folder


def run_demo(out_dir="results/demo", n_per_class=60, seed=0, quiet=False):
    """Generate data under out_dir/data, partition it, organize it; returns the paths made."""
    out_dir = Path(out_dir)
    data = step_generate(out_dir, n_per_class, seed)
    partition_dir, info = step_partition(out_dir, data, seed, quiet)
    organized = step_organize(out_dir, partition_dir, quiet)
    result = {"out": out_dir, "data": data, "partition": partition_dir, "splits_csv": partition_dir / "splits.csv",
              "partition_json": partition_dir / "partition.json", "organized": organized, "partition_info": info}
    print(f"[demo] done: everything is under {out_dir}")
    return result
