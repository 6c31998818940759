"""splits.csv: the contract between partition and everything after it.

Format (medclf.splits/1), one row per image, UTF-8, header row:
    path,label,label_index,split,group[,fold][,<metadata columns>...]
`path` is relative to the data root, with forward slashes. partition.json beside the file
records the classes (their order defines label_index), the positive class and the data root.

Readers also accept the seed dialects:
  * seed 002: headerless `filename,class_idx` in train.csv / val.csv / test.csv (the split is
    the file's name; bare file names are resolved against the data root, e.g. bin/);
  * seed 000: `[index,]filename,label,split` with a header, split `validation` meaning val.
"""

import csv
import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medclf.core.errors import MedclfError
from medclf.core.fileio import atomic_path, not_utf8_error, read_csv, read_json, sha256_file, write_text

SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("path", "label", "label_index", "split", "group")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
# The one naming convention that names a binary study's positive class without --positive.
CONVENTIONAL_POSITIVE = {frozenset({"no", "yes"}): "yes"}


@dataclass
class SplitTable:
    """The rows of a splits file plus what partition.json says about them."""

    frame: pd.DataFrame
    classes: list
    positive_class: object = None
    data_root: Path = None
    source: Path = None
    info: dict = field(default_factory=dict)
    files: list = field(default_factory=list)  # every file read: the splits file(s), partition.json
    dialect: str = "medclf"  # or "seed002", "seed000"

    def rows(self, split):
        if split not in SPLITS:
            raise MedclfError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return self.frame[self.frame["split"] == split].reset_index(drop=True)

    def resolve(self, relative_path):
        root = self.data_root if self.data_root is not None else Path(".")
        return Path(root) / relative_path


def write_splits_csv(path, frame, extra_columns=()):
    """Write rows in a fixed column order with '\\n' line ends, byte-identical for equal input."""
    write_text(path, splits_csv_text(frame, extra_columns))


def splits_csv_text(frame, extra_columns=()):
    """The exact text `write_splits_csv` writes."""
    columns = list(REQUIRED_COLUMNS)
    if "fold" in frame.columns:
        columns.append("fold")
    columns += [c for c in extra_columns if c not in columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in frame[columns].itertuples(index=False, name=None):
        writer.writerow(["" if (v is None or (isinstance(v, float) and pd.isna(v))) else v for v in record])
    return buffer.getvalue()


def _normalise_split(value, source):
    key = str(value).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise MedclfError(f"{source}: unknown split value {value!r}; use train, val or test")
    return _SPLIT_ALIASES[key]


def conventional_positive(classes):
    """The positive class a binary study names by convention (no/yes -> yes), else None."""
    return CONVENTIONAL_POSITIVE.get(frozenset(str(c) for c in classes)) if len(classes) == 2 else None


def named_positive(classes, positive, source, purpose="this"):
    """The positive class of a binary study: `positive` when given, else the no/yes convention.
    A binary study with neither is refused: guessing "the second class" silently swaps the meaning
    of sensitivity and specificity when the class order is alphabetical (melanoma < other).
    Multi-class studies without a positive return None (scored per class)."""
    classes = [str(c) for c in classes]
    if positive is not None:
        if str(positive) not in classes:
            raise MedclfError(f"{source}: positive class {positive!r} is not one of the classes "
                              f"({', '.join(classes)}); name one of them with --positive")
        return str(positive)
    if len(classes) != 2:
        return None
    positive = conventional_positive(classes)
    if positive is None:
        raise MedclfError(
            f"{source}: binary study ({classes[0]} vs {classes[1]}) without a named positive class, which "
            f"{purpose} needs; name it with --positive CLASS (e.g. `medclf partition ... --positive "
            f"{classes[0]}`, or --positive on this command)")
    return positive


def _lines(rows, limit=5):
    rows = [int(r) + 2 for r in rows]  # file line: header is line 1
    return ", ".join(map(str, rows[:limit])) + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def _integer_indices(df, path):
    values = pd.to_numeric(df["label_index"], errors="coerce")
    bad = [i for i, v in enumerate(values) if pd.isna(v) or v != int(v)]
    if bad:
        raise MedclfError(f"{path}: label_index is not a whole number on line(s) {_lines(bad)}; "
                          "write the class's index (0, 1, ...) or re-run `medclf partition`")
    return values.astype(int)


def classes_from_rows(df, path):
    """The file's own label -> label_index mapping as a class list (index k = its class),
    refusing a label with two indices, an index with two labels and gaps in 0..K-1."""
    pairs = df[["label", "label_index"]].drop_duplicates()
    for key, other in (("label", "label_index"), ("label_index", "label")):
        clash = pairs.groupby(key)[other].nunique()
        clash = clash[clash > 1]
        if len(clash):
            value = clash.index[0]
            rows = df.index[df[key] == value].tolist()
            found = ", ".join(map(str, sorted(df.loc[rows, other].unique())))
            shown = repr(value) if isinstance(value, str) else str(int(value))
            raise MedclfError(
                f"{path}: {key} {shown} comes with several {other} values ({found}) on line(s) "
                f"{_lines(rows)}; each class needs one label and one label_index: fix those rows "
                "or re-run `medclf partition`")
    indices = sorted(pairs["label_index"])
    if indices != list(range(len(indices))):
        raise MedclfError(f"{path}: label_index values {indices} are not 0..{len(indices) - 1}; number the "
                          "classes from 0 without gaps, or re-run `medclf partition`")
    return [str(label) for label in pairs.sort_values("label_index")["label"]]


def check_label_indices(df, classes, path, where):
    """Every row's label_index names a class and that class is the row's label."""
    n = len(classes)
    outside = df.index[(df["label_index"] < 0) | (df["label_index"] >= n)].tolist()
    if outside:
        raise MedclfError(
            f"{path}: label_index {int(df.loc[outside[0], 'label_index'])} on line(s) {_lines(outside)} is "
            f"outside the {n} classes of {where} (0..{n - 1}: {', '.join(classes)}); fix label_index or "
            "re-run `medclf partition`")
    named = [classes[k] for k in df["label_index"]]
    wrong = [i for i, (label, expected) in enumerate(zip(df["label"], named)) if str(label) != expected]
    if wrong:
        i = wrong[0]
        raise MedclfError(
            f"{path}: label and label_index disagree on line(s) {_lines(wrong)} (line {i + 2}: label "
            f"{df.loc[i, 'label']!r} with label_index {int(df.loc[i, 'label_index'])}, which is "
            f"{named[i]!r} in {where}); fix those rows or re-run `medclf partition`")


def _labels_from_indices(df, classes, path):
    """Seed dialects carry indices only: name them, refusing indices outside the classes."""
    n = len(classes)
    outside = df.index[(df["label_index"] < 0) | (df["label_index"] >= n)].tolist()
    if outside:
        raise MedclfError(f"{path}: class index {int(df.loc[outside[0], 'label_index'])} on row(s) "
                          f"{_lines(outside)} is outside the {n} classes ({', '.join(classes)}); "
                          "fix those rows or name the classes")
    return [classes[i] for i in df["label_index"]]


def _read_seed002(paths, classes):
    frames = []
    for p in paths:
        split = _normalise_split(Path(p).stem, p)
        df = read_csv(p, "write one `filename,class_idx` row per image", header=None,
                      names=["path", "label_index"], dtype={"path": str})
        if df.empty:
            raise MedclfError(f"{p}: no rows; write one `filename,class_idx` line per image")
        bad = ~df["label_index"].astype(str).str.strip().str.fullmatch(r"\d+")
        if bad.any():
            row = int(bad.idxmax())
            raise MedclfError(f"{p}: line {row + 1}: class_idx {df['label_index'][row]!r} is not a class index "
                              "(0, 1, ...); each line is `filename,class_idx`")
        df["split"] = split
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    df["label_index"] = _integer_indices(df, paths[0] if len(paths) == 1 else paths[0].parent)
    n = int(df["label_index"].max()) + 1
    classes = list(classes) if classes else (["no", "yes"] if n <= 2 else [str(i) for i in range(n)])
    df["label"] = _labels_from_indices(df, classes, paths[0] if len(paths) == 1 else paths[0].parent)
    df["group"] = df["path"]
    return df, classes


def _read_medclf(path, classes, data_root):
    df = read_csv(path, "re-run `medclf partition`", dtype={"path": str, "label": str, "group": str},
                  keep_default_na=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise MedclfError(f"{path}: missing column(s) {', '.join(missing)}; re-run `medclf partition`")
    df["split"] = [_normalise_split(v, path) for v in df["split"]]
    df["label_index"] = _integer_indices(df, path)
    meta_path = path.parent / "partition.json"
    info = _read_partition_info(meta_path) if meta_path.is_file() else {}
    if classes is not None:
        where = "the given classes"
    elif info.get("classes"):
        classes, where = [str(c) for c in info["classes"]], str(meta_path)
    else:
        classes, where = classes_from_rows(df, path), f"{path.name}'s own label -> label_index mapping"
    check_label_indices(df, list(classes), path, where)
    positive = info.get("positive_class") or conventional_positive(classes)
    files = [path] + ([meta_path] if info else [])
    return df, classes, positive, data_root or info.get("data_root"), info, files


def _read_partition_info(path):
    """partition.json as a dict whose classes, if given, are distinct names."""
    info = read_json(path)
    classes = info.get("classes") if isinstance(info, dict) else None
    if not isinstance(info, dict) or (classes is not None and (
            not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)
            or len(set(classes)) != len(classes))):
        raise MedclfError(f"{path}: not a partition record (expected an object whose classes are distinct names); "
                          "re-run `medclf partition`, which writes it beside splits.csv")
    return info


def _check_rows(df, path):
    """Refuse a table without rows, or with one image listed twice (it could sit in two splits)."""
    if df.empty:
        raise MedclfError(f"{path}: no image rows; re-run `medclf partition` (or list one image per row)")
    twice = df["path"][df["path"].duplicated()]
    if len(twice):
        raise MedclfError(f"{path}: {len(set(twice))} image(s) listed more than once (e.g. {twice.iloc[0]}); "
                          "keep one row per image, or re-run `medclf partition`")


def read_splits(path, data_root=None, classes=None):
    """Read medclf's splits.csv or a seed dialect. `path` may be a file or a folder that
    holds splits.csv (or seed 002's train.csv/val.csv/test.csv)."""
    path = Path(path)
    if path.is_dir():
        if (path / "splits.csv").is_file():
            path = path / "splits.csv"
        else:
            seed = [path / f"{s}.csv" for s in ("train", "val", "test") if (path / f"{s}.csv").is_file()]
            if not seed:
                raise MedclfError(f"{path}: no splits.csv (or train.csv/val.csv/test.csv) here; run `medclf partition` first")
            df, classes = _read_seed002(seed, classes)
            return SplitTable(df, classes, conventional_positive(classes),
                              Path(data_root) if data_root else path, seed[0], files=seed, dialect="seed002")
    if not path.is_file():
        raise MedclfError(f"{path}: splits file not found; run `medclf partition` first")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            first = next(csv.reader(fh), None)
    except UnicodeDecodeError as exc:
        raise not_utf8_error(path, exc) from exc
    if not first:
        raise MedclfError(f"{path}: empty splits file")
    info, files, dialect = {}, [path], "seed000" if "filename" in first else "seed002"
    if first[0] == "path":
        dialect = "medclf"
        df, classes, positive, root, info, files = _read_medclf(path, classes, data_root)
    elif "filename" in first:
        df = read_csv(path, "re-create the split file", dtype={"filename": str})
        df = df.drop(columns=[c for c in df.columns if c.startswith("Unnamed")])
        df = df.rename(columns={"filename": "path"})
        df["label_index"] = _integer_indices(df.assign(label_index=df["label"]), path)
        if "split" not in df.columns:
            df["split"] = _normalise_split(path.stem, path)
        df["split"] = [_normalise_split(v, path) for v in df["split"]]
        n = int(df["label_index"].max()) + 1
        classes = list(classes) if classes else [str(i) for i in range(n)]
        df["label"] = _labels_from_indices(df, classes, path)
        df["group"] = df["path"]
        positive, root = conventional_positive(classes), data_root
    else:
        try:
            int(first[1])
        except (IndexError, ValueError):
            raise MedclfError(
                f"{path}: unrecognised splits format (header {first!r}); expected medclf's "
                "`path,label,label_index,split,group` or seed 002's headerless `filename,class_idx`"
            ) from None
        df, classes = _read_seed002([path], classes)
        positive = conventional_positive(classes)
        root = data_root
    _check_rows(df, path)
    df["label_index"] = df["label_index"].astype(int)
    return SplitTable(df, list(classes), positive, Path(root) if root else path.parent, path, info, files, dialect)


# ---------------------------------------------------------------- a run carries its own split

RUN_COPIES = ("splits.csv", "partition.json")  # names of the copies in a run folder
# Images of a scored split that must not have been seen in these splits of the run.
SEEN_BY_RUN = {"test": ("train", "val"), "val": ("train",), "train": ()}


def _keep_or_copy(source, target, digest, trained):
    """Copy `source` to `target` atomically unless an identical copy is there; a run with
    checkpoints never gets its copy replaced by a different file."""
    if target.is_file() and (target.resolve() == source.resolve() or sha256_file(target) == digest):
        return
    if target.is_file() and trained:
        raise MedclfError(f"{source}: differs from {target}, the copy this run was trained on; a run resumes on "
                          f"its own split: restore {source} (cp {target} {source}) or start a new --run-name")
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def bind_splits_to_run(table, run_dir):
    """Copy the splits file and its partition.json byte for byte into the run folder (seed
    dialects: no copy) and return config.json's `split_files`: one {path, sha256, copy} per file
    read. The copies resolve images exactly as the originals: partition.json records an absolute
    data_root and config.json records the root the run used. A run with checkpoints keeps its
    copies: a source that changed since is refused rather than copied over them (resume)."""
    run_dir = Path(run_dir)
    trained = (run_dir / "last.pt").is_file() or (run_dir / "best.pt").is_file()
    names = dict(zip(table.files, RUN_COPIES)) if table.dialect == "medclf" else {}
    if not trained and table.dialect == "medclf" and len(table.files) == 1:
        (run_dir / RUN_COPIES[1]).unlink(missing_ok=True)  # a stale copy from an earlier, untrained attempt
    records = []
    for source in map(Path, table.files):
        digest = sha256_file(source)
        copy = names.get(source)
        if copy:
            _keep_or_copy(source, run_dir / copy, digest, trained)
        records.append({"path": str(source.resolve()), "sha256": digest, "copy": copy})
    return {"split_files": records}


def _refuse_changed(path, expected, run_dir, remedy):
    if expected and sha256_file(path) != expected:
        raise MedclfError(f"{path}: changed since {run_dir} was trained on it (its sha256 differs from the one "
                          f"in {run_dir / 'config.json'}); {remedy}")


def load_run_splits(run_dir, config, data_root=None):
    """The split a run was trained on: its own copy (<run>/splits.csv), or for runs trained before
    copies were made, the recorded splits file, refused when its sha256 (if recorded) or its
    per-split counts differ from what config.json says."""
    run_dir = Path(run_dir)
    root = data_root or config.get("data_root")
    records = config.get("split_files") or []
    if any(r.get("copy") for r in records):
        for r in records:
            if r.get("copy"):
                _refuse_changed(run_dir / r["copy"], r["sha256"], run_dir,
                                f"restore it from {r['path']} if that is unchanged, or train a new run")
        table = read_splits(run_dir / RUN_COPIES[0], data_root=root)
    else:
        source = config.get("splits_file") or config["arguments"]["splits"]
        for r in records:
            _refuse_changed(Path(r["path"]), r["sha256"], run_dir,
                            "the run's split is lost: re-create that file (same partition command and seed)")
        table = read_splits(source, data_root=root)
    counts = {s: int((table.frame["split"] == s).sum()) for s in SPLITS}
    if config.get("counts") and counts != config["counts"]:
        raise MedclfError(f"{table.source}: split counts {counts} differ from those {run_dir} was trained with "
                          f"{config['counts']} (re-partitioned since?); re-create the run's splits file or train again")
    return table


def _image_key(table, relative_path):
    return str(Path(table.resolve(relative_path)).absolute())


def refuse_images_seen_by_run(run_table, other, split):
    """Refuse images of `other`'s `split` that were in the run's train split (or, for test, its
    train or val split): scoring them would report training images as held-out."""
    seen = {_image_key(run_table, p) for s in SEEN_BY_RUN[split] for p in run_table.rows(s)["path"]}
    hits = [p for p in other.rows(split)["path"] if _image_key(other, p) in seen]
    if hits:
        shown = ", ".join(hits[:5]) + (f" and {len(hits) - 5} more" if len(hits) > 5 else "")
        raise MedclfError(
            f"{other.source}: {len(hits)} image(s) of its {split} split were in the "
            f"{' or '.join(SEEN_BY_RUN[split])} split of {run_table.source}, which the run was trained on "
            f"(e.g. {shown}); score the run's own split (leave out --splits) or train a new run on {other.source}")
