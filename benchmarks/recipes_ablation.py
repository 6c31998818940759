"""Ablation of the training-recipe building blocks (issue 15): the plain recipe, each block alone and
the combined recipe, on one dataset, measured with repeated grouped cross-validation (`medclf cv`)
or, with --seeds, with several training seeds on one train/val/test split.

    python benchmarks/recipes_ablation.py --dataset brain_mri|ham10000_malignant|ham10000_7class
        [--img-size 64] [--epochs 40] [--patience 8] [--folds 5 --repeats 2 | --seeds 0,1,2]
        [--configs plain,label-smoothing,...] [--threads 2] [--out results/recipes_ablation] [--dry-run]

The plain recipe is each dataset's shipped study as it was before issue 15 (studies/*.yaml: ResNet-18
from scratch, Adam 1e-3, batch 32, flips, the study's class balancing and monitored value), kept here
so the baseline does not move when the studies adopt a recipe. Every other config adds the CONFIGS
arguments to it; the recipe configs (`recipe-cpu-small`, and `-v1`, its first version) instead leave
epochs, patience, lr, batch size and augmentation to the recipe (explicit arguments would win over
it), so their budget is the recipe's own.

Measurement (every config on the same partition, seed and images):
- CV (default): `medclf partition --folds K --repeats R` once (lesion-grouped for HAM10000), then
  `medclf cv` per config. Metrics with 95% intervals on the out-of-fold probabilities averaged over
  the repeats (the CV folder's predictions_val.json: every non-test image once, predicted only by
  models that did not train on it), scored by medclf's report (DeLong for AUC, Clopper-Pearson for
  accuracy, MOVER-Wilson for balanced accuracy); the spread of the AUC over the repeats' pooled values.
- --seeds: one partition (val 15%, test 20%), `medclf train` + `medclf test` per seed; metrics with
  95% intervals on the test probabilities averaged over the seeds; the spread of the AUC over seeds.
Training minutes: the mean over the trained models of the summed epoch times in history.csv (train
and validation); wall minutes: the whole config (decoding, training, predicting), "resumed" when
this invocation found part of it finished (its wall time is not the config's).

Writes OUT/<dataset>_<size>px_<K>fold_x<R>/ (CV) or OUT/<dataset>_<size>px_seeds/: partition/, one
folder per config, ablation.md (the table, also printed) and ablation.json. A rerun skips what is finished (medclf cv resumes its folds; seed
runs with a best.pt and history are kept), so a killed ablation continues where it stopped.
"""

import argparse
import csv
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

from medclf.core.fileio import read_json, write_json, write_text  # noqa: E402
from medclf.evaluate.formatting import estimate_with_interval  # noqa: E402
from medclf.workflows.cv import mean_probabilities, predictions_from_probabilities, score, spread  # noqa: E402

HAM_PARTITION = ["--metadata", "{data}/ham10000_dev/HAM10000_metadata.csv", "--image-dir", "{data}/ham10000_dev/images",
                 "--image-col", "image_id", "--label-col", "dx", "--image-ext", ".jpg", "--group-col", "lesion_id"]
# dataset -> partition arguments (without split fractions and folds) and the plain recipe's train arguments
DATASETS = {
    "brain_mri": {
        "partition": ["--data-root", "{data}/brain_mri", "--classes", "no,yes", "--positive", "yes"],
        "train": ["--augment", "flip", "--monitor", "val_loss"],
    },
    "ham10000_malignant": {
        "partition": HAM_PARTITION + ["--label-map", "mel=malignant,bcc=malignant,akiec=malignant,*=benign",
                                      "--classes", "benign,malignant", "--positive", "malignant"],
        "train": ["--augment", "flips", "--balance", "loss-weights", "--monitor", "val_auc"],
    },
    "ham10000_7class": {
        "partition": HAM_PARTITION,
        "train": ["--augment", "flips", "--balance", "sampler", "--monitor", "val_balanced_accuracy"],
    },
}
# config -> arguments added to the plain recipe ({augment}: the dataset's augmentation; {swa_epochs}: a
# quarter of --epochs). The flag names are the ones agreed for issue 15 (HELPERS.md).
CONFIGS = {
    "plain": [],
    "label-smoothing": ["--label-smoothing", "0.1"],
    "mixup": ["--mixup-alpha", "0.2"],
    "cutmix": ["--cutmix-alpha", "1.0"],
    "trivialaugment": ["--augment", "{augment}+trivialaugment"],
    "adamw-no-decay": ["--optimizer", "adamw", "--weight-decay", "0.05", "--no-decay-norm-bias"],
    "ema": ["--ema-decay", "0.999"],
    "swa": ["--swa-epochs", "{swa_epochs}"],
    "combined": ["--label-smoothing", "0.1", "--mixup-alpha", "0.2", "--augment", "{augment}+trivialaugment",
                 "--optimizer", "adamw", "--weight-decay", "0.05", "--no-decay-norm-bias", "--ema-decay", "0.999"],
    # cpu-small's first version (AdamW, decay 0.05 off norm/bias), measured before the decay was dropped
    "recipe-cpu-small-v1": ["--recipe", "cpu-small", "--optimizer", "adamw", "--weight-decay", "0.05",
                            "--no-decay-norm-bias"],
    "recipe-cpu-small": ["--recipe", "cpu-small"],
}
RECIPE_SETS = {"--epochs", "--patience", "--lr", "--batch-size", "--augment"}  # left to a --recipe
COLUMNS = ["config", "macro AUC", "balanced accuracy", "accuracy", "AUC spread", "train min/model", "wall min"]


# ---------------------------------------------------------------- commands

def medclf(*words):
    return [sys.executable, "-m", "medclf", *[str(w) for w in words]]


def partition_command(args, out):
    words = [w.format(data=args.data) for w in DATASETS[args.dataset]["partition"]]
    fractions = ["--val", "0.15", "--test", "0.2"] if args.seeds else [
        "--val", "0", "--test", "0.2", "--folds", args.folds, "--repeats", args.repeats]
    return medclf("partition", *words, *fractions, "--seed", "0", "--out", out, "--quiet")


def train_arguments(args, config):
    """The plain recipe's train arguments, with the config's options in place of the plain ones they name."""
    dataset = DATASETS[args.dataset]["train"]
    plain = ["--arch", "resnet18", "--weights", "none", "--img-size", args.img_size, "--epochs", args.epochs,
             "--patience", args.patience, "--lr", "0.001", "--batch-size", "32", *dataset]
    extra = [w.format(augment=dataset[dataset.index("--augment") + 1], swa_epochs=max(1, args.epochs // 4))
             for w in CONFIGS[config]]
    replaced = {w for w in extra if w in plain} | (RECIPE_SETS if "--recipe" in extra else set())
    plain = without_options(plain, replaced)
    common = ["--threads", args.threads, "--no-progress"] if args.threads else ["--no-progress"]
    return [str(w) for w in plain + extra + common]


def without_options(words, options):
    """`words` without each of `options` and the value after it (options that take one value)."""
    out, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in options:
            skip = True
        else:
            out.append(word)
    return out


def config_commands(args, config, splits, folder):
    """The commands that train and predict one config: [(command, run folder or None)]."""
    train = train_arguments(args, config)
    if not args.seeds:
        return [(medclf("cv", "--splits", splits, "--out", folder.parent, "--run-name", folder.name, *train), None)]
    commands = []
    for seed in args.seeds:
        run = folder / f"seed{seed}"
        commands.append((medclf("train", "--splits", splits, "--out", folder, "--run-name", run.name, *train,
                                "--seed", seed), run))
        commands.append((medclf("test", "--run", run, "--no-progress"), None))
    return commands


def run_command(command, dry_run):
    """Print the command as typed at a shell (`medclf ...`) and run it with this checkout's package."""
    print("$ " + shlex.join(["medclf", *command[3:]]), flush=True)
    if not dry_run:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "python"),
                                                                          os.environ.get("PYTHONPATH")])))
        subprocess.run(command, check=True, env=env)


# ---------------------------------------------------------------- results

def history_minutes(run_dir):
    with open(Path(run_dir) / "history.csv", newline="") as fh:
        return sum(float(row["seconds"]) for row in csv.DictReader(fh)) / 60


def auc_key(result):
    return "roc_auc" if result["task"] == "binary" else "macro_auc"


def summarise_cv(folder):
    """Metrics of the OOF probabilities averaged over the repeats; AUC spread over the repeats."""
    result = score(read_json(folder / "predictions_val.json"))
    key = auc_key(result)
    oof = read_json(folder / "results_oof.json")
    members = read_json(folder / "cv.json")["members"]
    return result, oof["over_repeats"][key], [history_minutes(m["run"]) for m in members]


def summarise_seeds(folder, seeds):
    """Metrics of the test probabilities averaged over the seeds; AUC spread over the seeds."""
    records = [read_json(folder / f"seed{s}" / "predictions_test.json") for s in seeds]
    paths, labels, mean = mean_probabilities(records, [f"seed{s}" for s in seeds])
    model = dict(records[0]["model"], kind=f"mean of {len(seeds)} seeds' probabilities")
    result = score(predictions_from_probabilities(records[0], "test", paths, labels, mean, model))
    key = auc_key(result)
    aucs = [score(r)["metrics"][key] for r in records]
    return result, spread([a["estimate"] for a in aucs]), [history_minutes(folder / f"seed{s}") for s in seeds]


def table_row(config, result, auc_spread, minutes, wall_seconds):
    """One table row; wall_seconds None: the config was resumed."""
    m = result["metrics"]
    sd = "NA" if auc_spread["sd"] is None else f"{auc_spread['sd']:.3f}"
    spread_text = "NA" if auc_spread["mean"] is None else f"{auc_spread['mean']:.3f} ± {sd} (n = {auc_spread['n']})"
    return {"config": config, "macro AUC": estimate_with_interval(m[auc_key(result)]),
            "balanced accuracy": estimate_with_interval(m["balanced_accuracy"]),
            "accuracy": estimate_with_interval(m["accuracy"]), "AUC spread": spread_text,
            "train min/model": f"{sum(minutes) / len(minutes):.2f}", "wall min": "resumed" if wall_seconds is None else f"{wall_seconds / 60:.1f}",
            "n": result["n"]}


def markdown_table(rows, caption):
    lines = [caption, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def caption(args, n):
    design = (f"{len(args.seeds)} seeds ({','.join(map(str, args.seeds))}) of one split, test split ({n} images), "
              "probabilities averaged over the seeds" if args.seeds else
              f"{args.folds}-fold x {args.repeats}-repeat grouped CV, out-of-fold probabilities averaged over the "
              f"repeats ({n} images)")
    return (f"{args.dataset}, ResNet-18 from scratch at {args.img_size} px, at most {args.epochs} epochs "
            f"(patience {args.patience}); {design}. 95% intervals: DeLong (AUC), MOVER-Wilson (balanced "
            f"accuracy), Clopper-Pearson (accuracy). AUC spread: mean ± SD of the AUC over the "
            f"{'seeds' if args.seeds else 'repeats'}.")


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--data", type=Path, default=Path("../shared/data"),
                        help="folder holding brain_mri/ and ham10000_dev/ (default: %(default)s, from the current folder)")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=40, help="maximum epochs (the shipped studies: 40)")
    parser.add_argument("--patience", type=int, default=8, help="early-stopping patience (the shipped studies: 8)")
    parser.add_argument("--folds", type=int, default=5, help="CV folds")
    parser.add_argument("--repeats", type=int, default=2, help="CV repeats (fold assignments)")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")],
                        help="instead of CV: these training seeds on one split, e.g. 0,1,2")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated subset of: {', '.join(CONFIGS)} (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per training (default: one per core)")
    parser.add_argument("--out", type=Path, default=Path("results") / "recipes_ablation",
                        help="output folder, relative to the current directory (default: results/recipes_ablation)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    return args


def run_config(args, config, splits, folder):
    """Train and predict one config (skipping finished seed runs); returns its wall seconds, or
    None when part of it was finished before (a resumed CV folder or a kept seed run)."""
    started = time.perf_counter()
    resumed = not args.seeds and (folder / "cv.json").is_file()
    for command, run_dir in config_commands(args, config, splits, folder):
        if run_dir is not None and (run_dir / "best.pt").is_file() and (run_dir / "history.csv").is_file():
            print(f"# {run_dir}: trained already, kept", flush=True)
            resumed = True
            continue
        run_command(command, args.dry_run)
    return None if resumed else time.perf_counter() - started


def main(argv=None):
    args = parse_args(argv)
    # the design is in the name: a partition made for one CV layout must not be reused for another
    design = "seeds" if args.seeds else f"{args.folds}fold_x{args.repeats}"
    root = args.out / f"{args.dataset}_{args.img_size}px_{design}"
    splits = root / "partition" / "splits.csv"
    if not splits.is_file():
        run_command(partition_command(args, root / "partition"), args.dry_run)
    rows = []
    for config in args.configs:
        folder = root / config
        wall = run_config(args, config, splits, folder)
        if args.dry_run:
            continue
        summary = summarise_seeds(folder, args.seeds) if args.seeds else summarise_cv(folder)
        rows.append(table_row(config, *summary, wall))
        print(markdown_table(rows[-1:], f"# {config}"), flush=True)
    if args.dry_run:
        return 0
    text = markdown_table(rows, caption(args, rows[0]["n"]))
    write_text(root / "ablation.md", text)
    write_json(root / "ablation.json", {"arguments": {k: (str(v) if isinstance(v, Path) else v)
                                                      for k, v in vars(args).items()}, "rows": rows})
    print(text)
    print(root / "ablation.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
