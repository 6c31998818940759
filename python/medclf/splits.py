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
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medclf.errors import MedclfError
from medclf.fileio import not_utf8_error, read_csv, read_json, write_text

SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("path", "label", "label_index", "split", "group")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass
class SplitTable:
    """The rows of a splits file plus what partition.json says about them."""

    frame: pd.DataFrame
    classes: list
    positive_class: object = None
    data_root: Path = None
    source: Path = None
    info: dict = field(default_factory=dict)

    def rows(self, split):
        if split not in SPLITS:
            raise MedclfError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return self.frame[self.frame["split"] == split].reset_index(drop=True)

    def resolve(self, relative_path):
        root = self.data_root if self.data_root is not None else Path(".")
        return Path(root) / relative_path


def write_splits_csv(path, frame, extra_columns=()):
    """Write rows in a fixed column order with '\\n' line ends, byte-identical for equal input."""
    columns = list(REQUIRED_COLUMNS)
    if "fold" in frame.columns:
        columns.append("fold")
    columns += [c for c in extra_columns if c not in columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in frame[columns].itertuples(index=False, name=None):
        writer.writerow(["" if (v is None or (isinstance(v, float) and pd.isna(v))) else v for v in record])
    write_text(path, buffer.getvalue())


def _normalise_split(value, source):
    key = str(value).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise MedclfError(f"{source}: unknown split value {value!r}; use train, val or test")
    return _SPLIT_ALIASES[key]


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
    df["label_index"] = df["label_index"].astype(int)
    n = int(df["label_index"].max()) + 1
    classes = list(classes) if classes else (["no", "yes"] if n <= 2 else [str(i) for i in range(n)])
    df["label"] = [classes[i] for i in df["label_index"]]
    df["group"] = df["path"]
    return df, classes


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
            return SplitTable(df, classes, "yes" if classes == ["no", "yes"] else None,
                              Path(data_root) if data_root else path, seed[0])
    if not path.is_file():
        raise MedclfError(f"{path}: splits file not found; run `medclf partition` first")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            first = next(csv.reader(fh), None)
    except UnicodeDecodeError as exc:
        raise not_utf8_error(path, exc) from exc
    if not first:
        raise MedclfError(f"{path}: empty splits file")
    info = {}
    if first[0] == "path":
        df = read_csv(path, "re-run `medclf partition`", dtype={"path": str, "label": str, "group": str},
                      keep_default_na=False)
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise MedclfError(f"{path}: missing column(s) {', '.join(missing)}; re-run `medclf partition`")
        df["split"] = [_normalise_split(v, path) for v in df["split"]]
        meta_path = path.parent / "partition.json"
        if meta_path.is_file():
            info = _read_partition_info(meta_path)
        if classes is None:
            classes = info.get("classes") or sorted(set(df["label"]))
        positive = info.get("positive_class")
        root = data_root or info.get("data_root")
    elif "filename" in first:
        df = read_csv(path, "re-create the split file", dtype={"filename": str})
        df = df.drop(columns=[c for c in df.columns if c.startswith("Unnamed")])
        df = df.rename(columns={"filename": "path"})
        df["label_index"] = df["label"].astype(int)
        if "split" not in df.columns:
            df["split"] = _normalise_split(path.stem, path)
        df["split"] = [_normalise_split(v, path) for v in df["split"]]
        n = int(df["label_index"].max()) + 1
        classes = list(classes) if classes else [str(i) for i in range(n)]
        df["label"] = [classes[i] for i in df["label_index"]]
        df["group"] = df["path"]
        positive, root = (classes[1] if len(classes) == 2 else None), data_root
    else:
        try:
            int(first[1])
        except (IndexError, ValueError):
            raise MedclfError(
                f"{path}: unrecognised splits format (header {first!r}); expected medclf's "
                "`path,label,label_index,split,group` or seed 002's headerless `filename,class_idx`"
            ) from None
        df, classes = _read_seed002([path], classes)
        positive = "yes" if classes == ["no", "yes"] else None
        root = data_root
    _check_rows(df, path)
    df["label_index"] = df["label_index"].astype(int)
    return SplitTable(df, list(classes), positive, Path(root) if root else path.parent, path, info)
