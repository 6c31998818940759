"""The demo pipeline on generated data (no download needed).

`run_demo` runs every stage once, in order: generate, partition, organize, train, test, report.
Train, test and report go through the `medclf` command line, exactly as a user would type them,
so the demo exercises (and shows) the real commands.
"""

import json
import shutil
from pathlib import Path

from medclf.core.errors import MedclfError
from medclf.prepare import demo_data
from medclf.prepare.organize import organize
from medclf.prepare.partition import PartitionOptions, partition

DEMO_MARKER = ".medclf-demo"


def prepare_out_dir(out_dir):
    """The demo owns its output folder: a rerun replaces what an earlier demo wrote there (every
    stage refuses to overwrite a different earlier output), and any other non-empty folder is refused."""
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / DEMO_MARKER).is_file():
            raise MedclfError(f"{out_dir}: folder exists and was not written by `medclf demo`; "
                              "choose another --out (the demo replaces its own folder on a rerun)")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DEMO_MARKER).write_text("written by medclf demo; replaced on the next demo run\n", encoding="utf-8")


def step_generate(out_dir, n_per_class, seed):
    data = Path(out_dir) / "data"
    paths = demo_data.generate(data, n_per_class=n_per_class, seed=seed)
    print(f"[demo] 1. generated {len(paths)} synthetic MRI-like images in {data} (classes no, yes; "
          f"faint lesions of varying size and contrast, some slices re-exported under another patient id)")
    return data


def step_partition(out_dir, data, seed, quiet=False):
    folder = Path(out_dir) / "partition"
    info = partition(PartitionOptions(out=folder, data_root=data, val=0.2, test=0.2, seed=seed,
                                      classes=list(demo_data.CLASSES), positive="yes", quiet=quiet))
    print(f"[demo] 2. partitioned into {folder / 'splits.csv'} (+ partition.json)")
    print(duplicate_summary(info))
    return folder, info


def duplicate_summary(info):
    """What the partition's duplicate search found and where the clusters went, in one line."""
    clusters, leakage = info["duplicates"]["clusters"], info["leakage"]
    crossing = (leakage["groups_across_splits"] + leakage["exact_duplicates_across_splits"]
                + leakage["near_duplicates_across_splits"])
    return (f"[demo]    duplicates: {clusters['count']} clusters of near-identical slices ({clusters['files']} files), "
            f"each kept inside one split; leakage across splits: {crossing} "
            f"(the clusters are listed in partition.json under \"duplicates\")")


def step_organize(out_dir, partition_dir, quiet=False):
    folder = Path(out_dir) / "organized"
    organize(partition_dir / "splits.csv", folder, mode="link", layout="imagefolder", quiet=quiet)
    print(f"[demo] 3. organized as {folder}/<split>/<class>/ (hard links)")
    return folder


def _command(runner, argv):
    print("[demo]    $ medclf " + " ".join(str(a) for a in argv))
    status = runner([str(a) for a in argv])
    if status != 0:
        raise MedclfError(f"demo step `medclf {argv[0]}` failed with status {status} (see the message above)")


def step_train(runner, out_dir, partition_dir, seed, epochs, img_size, arch="resnet18"):
    _command(runner, ["train", "--splits", partition_dir / "splits.csv", "--arch", arch, "--weights", "none",
              "--img-size", img_size, "--epochs", epochs, "--patience", 4, "--batch-size", 16,
              "--augment", "flip", "--seed", seed, "--out", out_dir, "--run-name", arch])
    run_dir = Path(out_dir) / arch
    print(f"[demo] 4. trained {arch} from scratch: {run_dir}/ (best.pt, history.csv, curves.png)")
    return run_dir


def step_test(runner, run_dir):
    _command(runner, ["test", "--run", run_dir, "--split", "test"])
    print(f"[demo] 5. predictions: {run_dir / 'predictions_test.json'} (and predictions_val.json)")


def step_report(runner, run_dir):
    _command(runner, ["report", "--run", run_dir, "--split", "test"])
    results = json.loads((Path(run_dir) / "results_test.json").read_text(encoding="utf-8"))
    print(f"[demo] 6. report: {run_dir / 'report_test.md'} (engine {results['engine']['route']})")
    for name in ("sensitivity", "specificity", "roc_auc", "accuracy", "cohen_kappa"):
        m = results["metrics"][name]
        if m.get("estimate") is not None:
            lower, upper = m.get("lower"), m.get("upper")
            interval = f"  95% CI {lower:.3f}-{upper:.3f}" if lower is not None and upper is not None else ""
            print(f"[demo]      {name:<12} {m['estimate']:.3f}{interval}")
    return results


def run_demo(out_dir="results/demo", n_per_class=80, seed=0, quiet=False, epochs=8, img_size=64,
             stop_after=None, runner=None):
    """Generate data under out_dir/data and run partition, organize, train, test and report on it;
    `runner(argv) -> int` runs the medclf command lines of train, test and report.

    stop_after="organize" ends after the data stages (no runner needed). Returns the paths made.
    """
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir)
    data = step_generate(out_dir, n_per_class, seed)
    partition_dir, info = step_partition(out_dir, data, seed, quiet)
    organized = step_organize(out_dir, partition_dir, quiet)
    result = {"out": out_dir, "data": data, "partition": partition_dir, "splits_csv": partition_dir / "splits.csv",
              "partition_json": partition_dir / "partition.json", "organized": organized, "partition_info": info}
    if stop_after != "organize":
        if runner is None:
            raise ValueError("run_demo needs a runner for its train, test and report steps")
        run_dir = step_train(runner, out_dir, partition_dir, seed, epochs, img_size)
        step_test(runner, run_dir)
        result["results"] = step_report(runner, run_dir)
        result["run"] = run_dir
    print(f"[demo] done: everything is under {out_dir}")
    return result
