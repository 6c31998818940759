"""`medclf cv`: repeated, grouped K-fold cross-validation on a splits.csv with fold columns.

`medclf partition --folds K --repeats R` gives every non-test image a fold in each of the R
columns fold, fold_r1, ... (groups never cross folds). For each repeat j and fold k this stage
trains one ordinary run, `<cv>/fold<k>[_r<j>]/`, with the images of fold k as its val split
(early stopping and best.pt on them) and the other non-test images as its train split; the test
split is never trained or selected on. Each fold's splits file is written to
`<cv>/splits/<fold run>/` and copied into its run as usual, so `medclf test --run <cv>/fold0`
works. Every fold then predicts its val images (out-of-fold) and the test split with its best
weights (best.pt), through one decoded-image cache shared by all folds and repeats.

The CV folder (`<out>/<run-name>/`, or `<cv>/tta_<name>/` for the predictions with --tta):
  cv.json                  medclf.cv/1: arguments, splits file SHA-256, folds, members and their
                           best epochs, cache build seconds, versions
  predictions_oof.json     every non-test image once per repeat (keys `folds`, `repeats`)
  predictions_val.json     the out-of-fold probabilities averaged over the repeats, one row per
                           non-test image: what `medclf report --threshold-rule` tunes on
  predictions_test.json    the fold ensemble: the mean of all K x R fold models' probabilities
  results_oof.json, report_oof.md   OOF metrics with intervals per repeat (pooled over its OOF
                           predictions), with the mean and spread over folds and over repeats
All predictions files follow medclf.predictions/1, so report, compare and R read them unchanged.

A killed CV resumes when the same command runs again: finished folds (training_finished) are
skipped, a fold with a last.pt continues from it (`train --resume`, replaying the same epochs),
and the CV outputs are written once every fold of every selected repeat is trained.
"""

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medclf.core import layout, schemas
from medclf.core.errors import MedclfError
from medclf.core.fileio import read_json, sha256_file, write_json, write_text
from medclf.core.predictions import build_record
from medclf.core.splits import SPLITS, read_splits, splits_csv_text

CV_SCHEMA = schemas.CV
CV_RESULTS_SCHEMA = schemas.CV_RESULTS
# Options that may change between invocations of one CV without changing its models.
FREE_OPTIONS = {"progress", "device", "cache", "workers", "threads", "tta", "folds", "resume", "tensorboard"}


def _log(message):
    print(f"medclf cv: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- folds and their splits

def fold_column(repeat):
    return "fold" if repeat == 0 else f"fold_r{repeat}"


def fold_run_name(fold, repeat):
    """fold<k> for the first repeat, fold<k>_r<j> after (the splits.csv column names)."""
    return f"fold{fold}" if repeat == 0 else f"fold{fold}_r{repeat}"


def fold_values(table, repeat):
    """The fold of every non-test row in assignment `repeat`, as ints; refuses gaps."""
    column = fold_column(repeat)
    rows = table.frame[table.frame["split"] != "test"]
    values = rows[column].astype(str).str.strip()
    bad = rows["path"][~values.str.fullmatch(r"\d+(\.0)?")]
    if len(bad):
        raise MedclfError(f"{table.source}: {len(bad)} non-test row(s) without a {column} value (e.g. {bad.iloc[0]}); "
                          "re-run `medclf partition --folds K` to assign every non-test image a fold")
    return values.astype(float).astype(int)


def cv_layout(table, repeats=None):
    """(number of folds, repeats to use) of a splits table with fold columns."""
    if "fold" not in table.frame.columns:
        raise MedclfError(f"{table.source}: no fold column; partition with folds first "
                          "(`medclf partition ... --folds 5 [--repeats 3]`)")
    available = 1
    while fold_column(available) in table.frame.columns:
        available += 1
    repeats = available if repeats is None else int(repeats)
    if not 1 <= repeats <= available:
        raise MedclfError(f"--repeats {repeats}: {table.source} holds {available} fold assignment(s) "
                          f"({', '.join(fold_column(r) for r in range(available))}); use 1..{available}, or "
                          "re-partition with --repeats")
    n_folds = int(fold_values(table, 0).max()) + 1
    if n_folds < 2:
        raise MedclfError(f"{table.source}: the fold column holds one fold; partition with --folds 2 or more")
    return n_folds, list(range(repeats))


def parse_folds(spec, n_folds):
    """--folds all | 0,2,4 -> sorted fold indices."""
    if spec in (None, "all"):
        return list(range(n_folds))
    try:
        folds = sorted({int(part) for part in str(spec).split(",") if part.strip()})
    except ValueError:
        folds = []
    if not folds or folds[0] < 0 or folds[-1] >= n_folds:
        raise MedclfError(f"--folds {spec}: use all, or fold numbers 0..{n_folds - 1} separated by commas")
    return folds


def fold_frame(table, repeat, fold):
    """The rows with fold `fold` of assignment `repeat` as val, the other non-test rows as train,
    test unchanged."""
    frame = table.frame.copy()
    non_test = frame["split"] != "test"
    folds = fold_values(table, repeat)
    frame.loc[non_test, "split"] = np.where(folds.to_numpy() == fold, "val", "train")
    return frame


def write_fold_splits(table, repeat, fold, folder):
    """splits.csv and partition.json of one fold in `folder`; returns the splits.csv path. The
    partition record is the original one with this fold's counts and where it came from."""
    frame = fold_frame(table, repeat, fold)
    extra = [c for c in table.frame.columns if c not in ("path", "label", "label_index", "split", "group", "fold")]
    info = dict(table.info)
    info["counts"] = {s: {c: int(((frame["split"] == s) & (frame["label"] == c)).sum()) for c in table.classes}
                      for s in SPLITS}
    info["cross_validation"] = {"splits_file": str(Path(table.source).resolve()),
                                "sha256": sha256_file(table.source), "fold_column": fold_column(repeat),
                                "repeat": repeat, "validation_fold": fold}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "splits.csv", splits_csv_text(frame, extra))
    write_json(folder / "partition.json", info)
    return folder / "splits.csv"


# ---------------------------------------------------------------- one decoded-image cache for all folds

class CacheView:
    """Rows `index` of a decoded-image array, indexable like the array (an int or a slice)."""

    def __init__(self, array, index):
        self.array, self.index = array, np.asarray(index, dtype=np.int64)

    def __len__(self):
        return len(self.index)

    def __getitem__(self, item):  # an int gives one image, a slice a block (channel_stats)
        return self.array[self.index[item]]


@dataclass
class SharedImages:
    """Every image of a splits table decoded once; `images(files, side, name)` for training.load_data."""

    array: object
    position: dict  # absolute path -> row of `array`
    side: int
    seconds: float

    def __call__(self, files, side, name=None):
        if side != self.side:
            raise MedclfError(f"cache side {side} differs from the shared cache's {self.side}; "
                              "every fold of a CV trains at one --img-size and --augment")
        missing = [str(f) for f in files if str(Path(f).absolute()) not in self.position]
        if missing:
            raise MedclfError(f"{missing[0]}: not in the CV's image cache; the fold's splits differ from the CV's")
        return CacheView(self.array, [self.position[str(Path(f).absolute())] for f in files])


def build_shared_images(table, side, mode, cache_dir, progress):
    """Decode every image of `table` once (data.build_cache); the cache the folds share."""
    from medclf.data import datasets as data_mod

    files = [table.resolve(p) for p in table.frame["path"]]
    started = time.perf_counter()
    array = data_mod.build_cache(files, side, mode, cache_dir, "cv_all", progress)
    position = {str(Path(f).absolute()): i for i, f in enumerate(files)}
    return SharedImages(array, position, side, round(time.perf_counter() - started, 3))


# ---------------------------------------------------------------- combining fold predictions (pure)

def mean_probabilities(records, names=None):
    """The mean of the records' probabilities, image by image, joined by path; all records must
    hold the same images and classes with the same labels (ensemble.align_members, named by
    `names`, default "record 1", "record 2", ...). Returns (paths, labels, (N, K) mean) in the
    first record's order."""
    from medclf.evaluate.ensemble import align_members

    names = names or [f"record {i}" for i in range(1, len(records) + 1)]
    aligned = align_members([{"source": name, "classes": list(r["classes"]), "paths": list(r["paths"]),
                              "labels": np.asarray(r["labels"]),
                              "probabilities": np.asarray(r["probabilities"], dtype=np.float64)}
                             for name, r in zip(names, records)])
    mean = np.mean([member["probabilities"] for member in aligned], axis=0)
    return aligned[0]["paths"], aligned[0]["labels"].tolist(), mean


def predictions_from_probabilities(template, split, paths, labels, probabilities, model):
    """A medclf.predictions/1 record (with seed 002's keys and a softmax uncertainty block) of
    given probabilities; logits are their log."""
    from medclf.evaluate import uncertainty

    probabilities = np.asarray(probabilities, dtype=np.float64)
    return build_record(split, template["classes"], template.get("positive_class"), model, paths, labels,
                        probabilities, uncertainty=uncertainty.uncertainty_record("softmax", probabilities=probabilities))


def out_of_fold_record(fold_records, model):
    """predictions_oof.json from {(repeat, fold): that fold's val predictions}: every row once
    per repeat, ordered by repeat then fold, with `folds` and `repeats` per row."""
    keys = sorted(fold_records)
    template = fold_records[keys[0]]
    paths, labels, probabilities, folds, repeats = [], [], [], [], []
    for repeat, fold in keys:
        record = fold_records[(repeat, fold)]
        paths += record["paths"]
        labels += record["labels"]
        probabilities += record["probabilities"]
        folds += [fold] * len(record["paths"])
        repeats += [repeat] * len(record["paths"])
    out = predictions_from_probabilities(template, "oof", paths, labels, probabilities, model)
    out.update(folds=folds, repeats=repeats)
    return out


def check_out_of_fold(oof, non_test_paths, test_paths):
    """Every non-test image exactly once per repeat, never a test image."""
    test_paths = set(test_paths)
    for repeat in sorted(set(oof["repeats"])):
        rows = [p for p, r in zip(oof["paths"], oof["repeats"]) if r == repeat]
        leaked = sorted(set(rows) & test_paths)
        if leaked or len(rows) != len(set(rows)) or set(rows) != set(non_test_paths):
            raise MedclfError(f"out-of-fold predictions of repeat {repeat} do not cover each non-test image once "
                              f"({len(rows)} rows, {len(set(rows))} distinct, {len(non_test_paths)} non-test images, "
                              f"{len(leaked)} test images); re-run `medclf cv`")


def repeat_subset(oof, repeat):
    """The rows of one repeat of an OOF record, as a predictions record."""
    rows = [i for i, r in enumerate(oof["repeats"]) if r == repeat]
    return {**oof, **{key: [oof[key][i] for i in rows] for key in
                      ("paths", "labels", "predictions", "probabilities", "logits", "predictive probabilities",
                       "label probabilities", "folds", "repeats")}}


# ---------------------------------------------------------------- the OOF report (pure on records)

BINARY_HEADLINE = ("roc_auc", "sensitivity", "specificity", "balanced_accuracy")
MULTICLASS_HEADLINE = ("macro_auc", "balanced_accuracy", "accuracy", "cohen_kappa")


def score(record):
    """results (medclf.results/1, Python engine) of an in-memory predictions record."""
    from medclf.evaluate.report import python_report

    return python_report({"predictions_path": None, "predictions": record, "positive": None, "threshold": None,
                          "threshold_rule": None, "group": None, "boot_n": 0, "seed": 1, "legacy": False})


def spread(values):
    """{mean, sd (n - 1), min, max, n} of the finite values (sd None below two)."""
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return {"mean": float(np.mean(values)), "sd": sd, "min": min(values), "max": max(values), "n": len(values)}


def oof_results(oof, fold_records):
    """Per repeat, the metrics pooled over its OOF predictions (with intervals); per fold, the
    metrics of its val predictions; the mean and spread of each headline metric over the folds
    (all repeats) and over the repeats' pooled values."""
    pooled = {r: score(repeat_subset(oof, r)) for r in sorted(set(oof["repeats"]))}
    task = next(iter(pooled.values()))["task"]
    headline = BINARY_HEADLINE if task == "binary" else MULTICLASS_HEADLINE
    per_fold = {key: score(record)["metrics"] for key, record in sorted(fold_records.items())}
    return {
        "schema": CV_RESULTS_SCHEMA, "task": task, "positive_class": next(iter(pooled.values())).get("positive_class"),
        "threshold": "0.5 on P(positive) (binary) or argmax (multi-class): fixed, nothing tuned",
        "headline": list(headline),
        "repeats": [{"repeat": r, "n": res["n"], "metrics": {m: res["metrics"][m] for m in headline}}
                    for r, res in pooled.items()],
        "folds": [{"repeat": r, "fold": f, "n": len(fold_records[(r, f)]["paths"]),
                   "metrics": {m: metrics[m]["estimate"] for m in headline}} for (r, f), metrics in per_fold.items()],
        "over_folds": {m: spread([metrics[m]["estimate"] for metrics in per_fold.values()]) for m in headline},
        "over_repeats": {m: spread([res["metrics"][m]["estimate"] for res in pooled.values()]) for m in headline},
    }


def _spread_text(s):
    if s["mean"] is None:
        return "NA"
    sd = "NA" if s["sd"] is None else f"{s['sd']:.3f}"
    return f"{s['mean']:.3f} ± {sd} ({s['min']:.3f} to {s['max']:.3f}, n = {s['n']})"


def oof_markdown(results, cv_dir):
    """report_oof.md: pooled OOF metrics per repeat with 95% intervals, then the spreads."""
    from medclf.evaluate.formatting import estimate_with_interval

    headline = results["headline"]
    lines = [f"# Cross-validation {Path(cv_dir).name}: out-of-fold metrics", "",
             "Each non-test image is predicted once per repeat by the fold model that did not train on it "
             "(its best epoch). Pooled: one estimate over a repeat's OOF predictions, 95% intervals "
             "(DeLong for AUC, Clopper-Pearson / Wilson for proportions; Python engine). Threshold: "
             f"{results['threshold']}. Thresholds to apply to test are tuned on OOF predictions only "
             "(predictions_val.json here = OOF averaged over repeats), never on test.", "",
             "| repeat | n | " + " | ".join(headline) + " |", "|---|---|" + "---|" * len(headline)]
    for row in results["repeats"]:
        lines.append(f"| {row['repeat']} | {row['n']} | "
                     + " | ".join(estimate_with_interval(row["metrics"][m]) for m in headline) + " |")
    lines += ["", "Mean ± SD (min to max) over", "", "| metric | folds (all repeats) | repeats (pooled per repeat) |",
              "|---|---|---|"]
    for m in headline:
        lines.append(f"| {m} | {_spread_text(results['over_folds'][m])} | {_spread_text(results['over_repeats'][m])} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the stage

@dataclass
class CvRun:
    """What one invocation works on."""

    table: object
    cv_dir: Path
    train_config: dict
    n_folds: int
    folds: list
    repeats: list
    views: list
    members: dict = field(default_factory=dict)  # (repeat, fold) -> run folder


def prepare_cv(config, folds="all", repeats=None, tta="none"):
    """Read the splits, check the options, and record (or check) cv.json's arguments."""
    from medclf.infer.predict import tta_views

    if not config.get("splits"):
        raise MedclfError("--splits is required (a splits.csv written by `medclf partition --folds K`)")
    table = read_splits(config["splits"], data_root=config.get("data_root"))
    if table.dialect != "medclf":
        raise MedclfError(f"{table.source}: cross-validation needs medclf's splits.csv with fold columns; "
                          "run `medclf partition --folds K`")
    n_folds, repeat_list = cv_layout(table, repeats)
    config = dict(config, run_name=config.get("run_name") or f"cv_{config.get('arch') or 'resnet18'}")
    cv_dir = Path(config.get("out") or "results") / config["run_name"]
    record_arguments(cv_dir, config, table, repeat_list)  # resolves, so every option is checked before the first fold
    return CvRun(table, cv_dir, config, n_folds, parse_folds(folds, n_folds), repeat_list, tta_views(tta))


def training_options(config):
    """The options that decide what the folds train, as they resolve (recipe and defaults
    applied, medclf.train.training.resolve_config), without the FREE_OPTIONS."""
    from medclf.train.training import resolve_config

    resolved = resolve_config(dict(config))
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(resolved.items()) if k not in FREE_OPTIONS}


def record_arguments(cv_dir, config, table, repeats):
    """Write cv.json's arguments (the resolved training options), or refuse when an existing CV
    was made with other ones. The recorded arguments are resolved again before the comparison:
    a cv.json from an older medclf lacks the options added since (their defaults apply) or holds
    None where a recipe decided, and both mean what they meant then; a recipe whose values changed
    since is refused by its values."""
    arguments = dict(training_options(config), repeats=len(repeats))
    splits_sha = sha256_file(table.source)
    path = cv_dir / "cv.json"
    if path.is_file():
        previous = read_json(path)
        recorded = dict(previous.get("arguments", {}))
        recorded = dict(training_options(recorded), repeats=recorded.get("repeats"))
        changed = sorted(k for k in set(arguments) | set(recorded) if recorded.get(k) != arguments.get(k))
        if changed or previous.get("splits_sha256") != splits_sha:
            what = ", ".join(changed) if changed else f"{table.source} changed"
            raise MedclfError(f"{cv_dir}: this cross-validation was made with other options or splits ({what}); "
                              "rerun it with the same ones to resume, or choose another --run-name")
        return previous
    from medclf.core.provenance import git_commit, library_versions

    record = {"schema": CV_SCHEMA, "arguments": arguments, "splits_file": str(Path(table.source).resolve()),
              "splits_sha256": splits_sha, "versions": library_versions(), "git_commit": git_commit()}
    write_json(path, record)
    return record


def train_fold(cv, repeat, fold, images):
    """Train (or resume, or skip when finished) one fold's run; returns its run folder."""
    from medclf.train.training import run_training
    from medclf.workflows.study import training_finished

    name = fold_run_name(fold, repeat)
    run_dir = cv.cv_dir / name
    if training_finished(run_dir):
        _log(f"{name}: finished earlier; skipped")
        return run_dir
    splits = write_fold_splits(cv.table, repeat, fold, cv.cv_dir / "splits" / name) \
        if not (run_dir / "last.pt").is_file() else cv.cv_dir / "splits" / name / "splits.csv"
    resume = (run_dir / "last.pt").is_file()
    _log(f"{name}: {'resuming' if resume else 'training'} (repeat {repeat}, fold {fold} as val)")
    config = dict(cv.train_config, splits=str(splits), out=str(cv.cv_dir), run_name=name, resume=resume)
    run_training(config, images=images)
    return run_dir


def predict_fold(cv, run_dir, images, device):
    """The fold model's (best.pt) predictions of its val images and of the test split, with the
    CV's TTA views; written in the run (or its tta_<name>/) and returned as {split: record}."""
    from medclf.core.splits import load_run_splits
    from medclf.data import datasets as data_mod
    from medclf.data import transforms
    from medclf.infer.predict import inference_precision, load_run, predict_probabilities, predictions_record, tta_name

    out_dir = run_dir if len(cv.views) == 1 else run_dir / f"tta_{tta_name(cv.views)}"
    wanted = {split: layout.predictions_file(out_dir, split) for split in ("val", "test")}
    if all(p.is_file() for p in wanted.values()):
        return {split: read_json(p) for split, p in wanted.items()}
    model, config, checkpoint = load_run(run_dir, device)
    precision = inference_precision(config, device)
    precision.prepare_model(model)
    table = load_run_splits(run_dir, config)
    args, transform = config["arguments"], transforms.eval_input(config).transform
    records = {}
    for split, path in wanted.items():
        files, labels, rel = data_mod.split_paths(table, split)
        loader = data_mod.make_loader(data_mod.CachedImageDataset(images(files, images.side), labels, transform),
                                      args["batch_size"])
        logits, _ = predict_probabilities(model, loader, precision, cv.views)
        records[split] = predictions_record(split, config, checkpoint, "best.pt", rel, labels, logits, tta=cv.views,
                                            inference=precision.record())
    for split, path in wanted.items():
        write_json(path, records[split])
    return records


def run_cv(config, folds="all", repeats=None, tta="none"):
    """Cross-validate per `config` (training options, see training.DEFAULTS). Returns
    {"cv_dir", "outputs" (paths written, empty until every fold is trained), "missing" folds}."""
    import torch

    from medclf.data.transforms import cache_side
    from medclf.engine.precision import select_device
    from medclf.infer.predict import tta_name
    from medclf.train.training import preserved_torch_state, resolve_config

    cv = prepare_cv(config, folds, repeats, tta)
    cfg = cv.train_config
    resolved = resolve_config(dict(cfg))  # a --recipe may set the size and augmentation
    side = cache_side(resolved["augment"], resolved["img_size"])
    images = build_shared_images(cv.table, side, cfg.get("cache") or "auto", cv.cv_dir / "cache",
                                 cfg.get("progress", True))
    _log(f"decoded {len(images.position)} images once in {images.seconds:.1f} s (shared by every fold)")
    for repeat in cv.repeats:
        for fold in cv.folds:
            train_fold(cv, repeat, fold, images)
    missing = [fold_run_name(f, r) for r in cv.repeats for f in range(cv.n_folds)
               if not _finished(cv.cv_dir / fold_run_name(f, r))]
    if missing:
        _log(f"not yet trained: {', '.join(missing)}; the CV predictions are written once every fold is")
        return {"cv_dir": cv.cv_dir, "outputs": [], "missing": missing}
    with preserved_torch_state():
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg["threads"]))
        device = select_device(cfg.get("device") or "auto")
        fold_records = {(r, f): predict_fold(cv, cv.cv_dir / fold_run_name(f, r), images, device)
                        for r in cv.repeats for f in range(cv.n_folds)}
    out_dir = cv.cv_dir if len(cv.views) == 1 else cv.cv_dir / f"tta_{tta_name(cv.views)}"
    outputs = write_cv_outputs(cv, fold_records, out_dir, images.seconds)
    return {"cv_dir": cv.cv_dir, "outputs": outputs, "missing": []}


def _finished(run_dir):
    from medclf.workflows.study import training_finished  # one definition of a finished training, shared with studies

    return training_finished(run_dir)


def write_cv_outputs(cv, fold_records, out_dir, cache_seconds):
    """predictions_oof/val/test.json, results_oof.json, report_oof.md and cv.json's members."""
    members = [{"repeat": r, "fold": f, "run": str(cv.cv_dir / fold_run_name(f, r)),
                "best_epoch": fold_records[(r, f)]["test"]["model"]["epoch"]} for r, f in sorted(fold_records)]
    template = next(iter(fold_records.values()))["test"]
    model = {"architecture": template["model"]["architecture"], "checkpoint": "best.pt",
             "kind": "cross-validation", "folds": cv.n_folds, "repeats": len(cv.repeats), "members": members,
             "tta": template["model"].get("tta", {"views": ["identity"], "reduction": "none (no TTA)"})}
    oof = out_of_fold_record({key: recs["val"] for key, recs in fold_records.items()},
                             dict(model, kind="cross-validation out-of-fold (each image by the fold model that did "
                                           "not train on it)"))
    non_test = cv.table.frame[cv.table.frame["split"] != "test"]["path"].tolist()
    check_out_of_fold(oof, non_test, cv.table.rows("test")["path"].tolist())
    paths, labels, mean = mean_probabilities([repeat_subset(oof, r) for r in cv.repeats],
                                             [f"repeat {r}'s out-of-fold predictions" for r in cv.repeats])
    val = predictions_from_probabilities(template, "val", paths, labels, mean,
                                         dict(model, kind="out-of-fold probabilities averaged over the repeats"))
    paths, labels, mean = mean_probabilities([recs["test"] for recs in fold_records.values()],
                                             [f"{fold_run_name(f, r)}'s test predictions" for r, f in fold_records])
    test = predictions_from_probabilities(template, "test", paths, labels, mean,
                                          dict(model, kind="fold ensemble (mean of the fold models' probabilities)"))
    results = oof_results(oof, {key: recs["val"] for key, recs in fold_records.items()})
    outputs = {name: out_dir / name for name in ("predictions_oof.json", "predictions_val.json",
                                                 "predictions_test.json", "results_oof.json", "report_oof.md")}
    for name, obj in (("predictions_oof.json", oof), ("predictions_val.json", val), ("predictions_test.json", test),
                      ("results_oof.json", results)):
        write_json(outputs[name], obj)
    write_text(outputs["report_oof.md"], oof_markdown(results, cv.cv_dir))
    record = read_json(cv.cv_dir / "cv.json")
    record.update(members=members, cache_seconds=cache_seconds, n_folds=cv.n_folds)
    write_json(cv.cv_dir / "cv.json", record)
    return list(outputs.values())

