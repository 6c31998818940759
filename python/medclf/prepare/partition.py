"""Leakage-free partitioning: images -> splits.csv + partition.json.

Steps (each a function below, called in order by `partition`):
 1. collect the images (`collect_images`): class folders (`scan_class_folders`) or a metadata
    CSV (`load_metadata`); then `select_classes` applies --label-map and --classes;
 2. read every image once (`read_images`): unreadable files are warned about, excluded and
    counted; with duplicate detection on, each readable file gets a fingerprint
    (`medclf.prepare.dedup.fingerprint_files`, in a process pool);
 3. build groups: exact and verified near-duplicate pairs (`detect_duplicates`) merged (union)
    with the `--group-col` value (patient, lesion) (`build_groups`), so that no group can cross
    splits; duplicates.csv and a contact sheet let a person review the pairs;
 4. assign whole groups to train/val/test (`assign_splits`; `medclf.prepare.assignment`) at random
    within strata (class, group-size band, --stratify-by column), then optionally k folds over the
    non-test groups the same way; the balance table (`medclf.prepare.balance`) compares the splits;
 5. write splits.csv and partition.json atomically (`splits_frame`, `write_outputs`), with a
    leakage report that checks the result rather than trusting the algorithm; an existing,
    different pair is replaced only with --overwrite.
The result depends only on the inputs and the seed, never on file-system listing order:
everything is sorted before the seeded random generator is used.
"""

import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medclf.core.errors import MedclfError, UnreadableImageError
from medclf.core.fileio import read_csv, read_json, write_json, write_text
from medclf.core.schemas import PARTITION as SCHEMA
from medclf.core.splits import REQUIRED_COLUMNS, SPLITS, splits_csv_text
from medclf.data.imageio import IMAGE_EXTENSIONS, is_image_name, read_image
from medclf.prepare import balance
from medclf.prepare import dedup as dedup_lib
from medclf.prepare.assignment import (ASSIGNMENT, assign_groups, class_share_deviation, outdated_assignment,
                                       size_band_labels)
from medclf.prepare import duplicates_review

_IGNORED_NAMES = {"thumbs.db", "desktop.ini"}


@dataclass
class PartitionOptions:
    out: Path
    data_root: Path = None
    metadata: Path = None
    image_dir: Path = None
    image_col: str = "image_id"
    label_col: str = "label"
    image_ext: str = None
    group_col: str = None
    stratify_by: str = None  # a metadata column whose values are spread over the splits like the classes
    val: float = 0.1
    test: float = 0.2
    seed: int = 0
    folds: int = 0
    repeats: int = 1  # fold assignments, each from its own derived seed (fold_seed)
    classes: list = None
    positive: str = None
    dedup: bool = True
    near_dups: bool = True  # near duplicates too (exact ones are found whenever dedup is on)
    dup_neighbours: int = dedup_lib.DEFAULT_NEIGHBOURS
    dup_min_inliers: int = dedup_lib.DEFAULT_MIN_INLIERS
    duplicate_decisions: Path = None  # CSV path_a,path_b,same|different overriding verdicts
    max_group_size: int = None  # None = dedup_lib.group_size_limit(number of images)
    label_map: object = None  # inline "a=b,*=c", a file path, or a dict
    overwrite: bool = False  # replace an existing, different splits.csv / partition.json in `out`
    quiet: bool = False


@dataclass
class Item:
    path: str  # relative to the data root, forward slashes
    label: str
    label_original: str = None
    group_value: str = None
    extra: dict = field(default_factory=dict)
    sha256: str = None  # of the file's bytes, set when the image is read (with --dedup)
    fingerprint: object = None  # medclf.prepare.dedup's fingerprint of the decoded image, likewise


def _rel(path, root):
    return Path(path).relative_to(root).as_posix()


def _warn(message):
    print(f"medclf partition: warning: {message}", file=sys.stderr)


# ---------------------------------------------------------------- collecting the images

def scan_class_folders(data_root, exclude=()):
    """Each subfolder of `data_root` is a class; images anywhere below it belong to it.
    Returns (items, skipped non-image files)."""
    root = Path(data_root)
    if not root.is_dir():
        raise MedclfError(f"{root}: data root not found; pass the folder that holds one subfolder per class")
    exclude = {Path(e).resolve() for e in exclude}
    class_dirs = sorted(
        (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and d.resolve() not in exclude),
        key=lambda d: d.name,
    )
    items, skipped = [], []
    for class_dir in class_dirs:
        for path in sorted(class_dir.rglob("*")):
            if path.is_dir() or any(part.startswith(".") for part in path.relative_to(root).parts):
                continue
            if path.name.lower() in _IGNORED_NAMES or not is_image_name(path):
                skipped.append(_rel(path, root))
                continue
            items.append(Item(_rel(path, root), class_dir.name))
    if not items:
        raise MedclfError(
            f"{root}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))} inside class "
            "subfolders); put each class's images in its own subfolder, e.g. DATA/no/ and DATA/yes/"
        )
    return items, skipped


class _FolderListing:
    """Image file names of a folder and its subfolders, each folder listed once (a stat per
    CSV row would dominate on 10,000 ids)."""

    def __init__(self, root):
        self.root, self._names, self._stems = Path(root), {}, {}

    def _list(self, folder):
        if folder not in self._names:
            directory = self.root / folder
            names = {e.name for e in os.scandir(directory) if e.is_file()} if directory.is_dir() else set()
            stems = {}
            for name in sorted(names):
                if is_image_name(name):
                    stems.setdefault(name.rsplit(".", 1)[0], []).append(name)
            self._names[folder], self._stems[folder] = names, stems
        return self._names[folder], self._stems[folder]

    def find(self, name):
        """The files `name` may mean: itself, else every `<name>.<image extension>`."""
        folder, _, base = name.rpartition("/")
        names, stems = self._list(folder)
        if base in names:
            return [name]
        return [f"{folder}/{c}" if folder else c for c in stems.get(base, [])]


def _metadata_frame(csv_path, image_dir, image_col, label_col, group_col, stratify_by=None):
    if not image_dir.is_dir():
        raise MedclfError(f"{image_dir}: image folder not found; check --image-dir")
    frame = read_csv(csv_path, "check --metadata: give a CSV with a header row and one image per row",
                     dtype=str, keep_default_na=False)
    for option, column in (("--image-col", image_col), ("--label-col", label_col), ("--group-col", group_col),
                           ("--stratify-by", stratify_by)):
        if column and column not in frame.columns:
            raise MedclfError(
                f"{csv_path}: no column {column!r} (named by {option}); columns are: "
                f"{', '.join(frame.columns)}; pass the right name with {option}"
            )
    if frame.empty:
        raise MedclfError(f"{csv_path}: no rows; the metadata CSV must list one image per row")
    return frame


def _listed(problems, show):
    shown = "; ".join(show(p) for p in problems[:10])
    return shown + (f" and {len(problems) - 10} more" if len(problems) > 10 else "")


def load_metadata(csv_path, image_dir, image_col, label_col, image_ext=None, group_col=None, stratify_by=None):
    """Rows of a metadata CSV as Items; every CSV column passes through as `extra`. An image id
    without its extension (HAM10000's `ISIC_0027419`) means the one file `<id>.<image extension>`
    in the folder; --image-ext appends a fixed extension instead."""
    csv_path, image_dir = Path(csv_path), Path(image_dir) if image_dir else Path(csv_path).parent
    frame = _metadata_frame(csv_path, image_dir, image_col, label_col, group_col, stratify_by)
    ext = image_ext if (not image_ext or image_ext.startswith(".")) else "." + image_ext
    listing = _FolderListing(image_dir)
    items, missing, blank, ambiguous = [], [], [], []
    for line, record in enumerate(frame.to_dict("records"), start=2):
        name = record[image_col].strip().replace("\\", "/")
        if ext and not name.lower().endswith(ext.lower()):
            name += ext
        label = record[label_col].strip()
        group_value = record[group_col].strip() if group_col else None
        if not name or not label or (group_col and not group_value):
            blank.append(line)
            continue
        found = listing.find(name) if not ext else [name] if (image_dir / name).is_file() else []
        if len(found) > 1:
            ambiguous.append((line, name, found))
            continue
        if not found:
            missing.append((line, name))
            continue
        items.append(Item(found[0], label, group_value=group_value, extra=record))
    if blank:
        cols = ", ".join(c for c in (image_col, label_col, group_col) if c)
        raise MedclfError(
            f"{csv_path}: {len(blank)} row(s) with an empty {cols} value (line(s) "
            f"{', '.join(map(str, blank[:10]))}); fill them in or remove those rows"
        )
    if ambiguous:
        raise MedclfError(
            f"{csv_path}: {len(ambiguous)} image id(s) match several files in {image_dir}: "
            + _listed(ambiguous, lambda a: f"line {a[0]}: {a[1]} -> {', '.join(a[2])}")
            + "; pass --image-ext to choose one extension, or remove the extra files"
        )
    if missing:
        raise MedclfError(
            f"{csv_path}: {len(missing)} row(s) name an image that does not exist: "
            + _listed(missing, lambda m: f"line {m[0]}: {image_dir / m[1]}")
            + f"; check --image-dir{' and --image-ext' if image_ext else ''} or remove those rows"
        )
    dupes = sorted(name for name, n in Counter(i.path for i in items).items() if n > 1)
    if dupes:
        raise MedclfError(
            f"{csv_path}: image(s) listed more than once in column {image_col!r}: {', '.join(dupes[:10])}; "
            "keep one row per image"
        )
    return items, list(frame.columns)


# ---------------------------------------------------------------- labels

def parse_label_map(spec):
    """`--label-map`: inline `mel=malignant,bcc=malignant,*=benign`, or a path to a .csv
    (`from,to` rows, optional header), .json or .yaml mapping. `*` maps every other label."""
    if spec is None or isinstance(spec, dict):
        return spec
    text = str(spec)
    path = Path(text)
    if path.suffix.lower() in (".csv", ".json", ".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise MedclfError(f"{path}: label map file not found; check --label-map")
        suffix = path.suffix.lower()
        if suffix == ".json":
            mapping = read_json(path)
        elif suffix in (".yaml", ".yml"):
            import yaml

            mapping = yaml.safe_load(path.read_text(encoding="utf-8"))
        else:
            import csv

            with open(path, encoding="utf-8-sig", newline="") as fh:
                rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
            if rows and [c.strip().lower() for c in rows[0][:2]] == ["from", "to"]:
                rows = rows[1:]
            if any(len(r) < 2 for r in rows):
                raise MedclfError(f"{path}: each label map row needs two columns `from,to`")
            mapping = {r[0].strip(): r[1].strip() for r in rows}
        if not isinstance(mapping, dict):
            raise MedclfError(f"{path}: the label map must be a mapping from original label to class")
        return {str(k): str(v) for k, v in mapping.items()}
    mapping = {}
    for part in text.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise MedclfError(
                f"--label-map: {part.strip()!r} is not `from=to`; write e.g. "
                "`mel=malignant,bcc=malignant,akiec=malignant,*=benign`"
            )
        source, target = (s.strip() for s in part.split("=", 1))
        mapping[source] = target
    return mapping


def apply_label_map(items, mapping):
    unmapped = sorted({i.label for i in items if i.label not in mapping} if "*" not in mapping else set())
    if unmapped:
        raise MedclfError(
            f"--label-map: no mapping for label(s) {', '.join(unmapped)}; add them or a `*=CLASS` catch-all"
        )
    for item in items:
        item.label_original = item.label
        item.label = mapping.get(item.label, mapping.get("*"))


def resolve_classes(items, classes=None, positive=None):
    present = sorted({i.label for i in items})
    if classes:
        classes = [c.strip() for c in classes]
        absent = [c for c in classes if c not in present]
        if absent:
            raise MedclfError(
                f"--classes {','.join(classes)}: no images of class(es) {', '.join(absent)}; "
                f"the data's classes are {', '.join(present)}"
            )
    else:
        classes = present
    if not classes:
        raise MedclfError("no images left to partition; check --classes and --label-map")
    if len(classes) < 2:
        raise MedclfError(
            f"only one class ({classes[0]!r}) found; a classifier needs at least two: add a second class "
            "folder (e.g. no/ beside yes/) or check --label-col / --label-map"
        )
    if positive is None and classes == ["no", "yes"]:
        positive = "yes"
    if positive is not None and positive not in classes:
        raise MedclfError(f"--positive {positive}: not one of the classes {', '.join(classes)}")
    return classes, positive


# ---------------------------------------------------------------- the split

def _check_class_sizes(classes, labels_by_group, ratios, folds):
    """A class too small for the requested split is a user error, not a silent empty split."""
    needed_bins = sum(1 for r in ratios if r > 0)
    problems = []
    for c in classes:
        n_groups = sum(1 for labels in labels_by_group if c in labels)
        needed = max(needed_bins, (folds + (1 if ratios[2] > 0 else 0)) if folds else 0)
        if n_groups < needed:
            problems.append(f"class {c!r} has {n_groups} independent image group(s) but needs at least {needed}")
    if problems:
        raise MedclfError(
            "; ".join(problems)
            + " (one per split"
            + (" and fold" if folds else "")
            + "); add images to that class, lower --val/--test to 0"
            + (" or use fewer --folds" if folds else "")
            + ", or leave the class out with --classes"
        )


# ---------------------------------------------------------------- the whole stage

def partition(options):
    """Run the whole partition stage (the steps of the module docstring); returns the
    partition.json dictionary."""
    opts = options
    check_options(opts)
    items, columns, skipped, data_root = collect_images(opts)
    items, label_map, excluded_classes = select_classes(items, opts)
    classes, positive = resolve_classes(items, opts.classes, opts.positive)
    items, unreadable = read_images(items, data_root, opts)
    classes, positive = resolve_classes(items, opts.classes, positive)  # a class may have been all unreadable
    dup_report = detect_duplicates(items, opts)
    components, group_of = build_groups(items, dup_report, opts)
    split_of, fold_of, assignment = assign_splits(items, classes, components, opts)
    frame, extra_columns = splits_frame(items, classes, split_of, fold_of, group_of, columns, label_map, opts)
    info = _partition_info(opts, classes, positive, data_root, items, split_of, fold_of, group_of, components,
                           dup_report, unreadable, skipped, label_map)
    info["excluded_classes"] = excluded_classes
    info["assignment"] = assignment
    info["balance"] = balance.balance_table(frame, balance_columns(columns, label_map, opts))
    review = None
    if dup_report is not None:
        review = duplicates_review.plan_review(dup_report, [i.path for i in items], [i.label for i in items],
                                               [i.group_value for i in items] if opts.group_col else None)
        info["duplicates"]["review"] = review.record
    write_outputs(Path(opts.out), frame, extra_columns, info, opts.overwrite,
                  before=(lambda: review.write(Path(opts.out), data_root)) if review else None)
    if not opts.quiet:
        print(format_summary(info))
        print(balance.format_balance(info["balance"]))
    for line in balance.imbalance_warnings(info["balance"]):
        _warn(line)
    if not opts.quiet:
        print(f"wrote {Path(opts.out) / 'splits.csv'} and {Path(opts.out) / 'partition.json'}")
    return info


def balance_columns(columns, label_map, opts):
    """The splits.csv columns the balance table compares: the metadata columns (and the original
    label under --label-map), not the image and group identifiers."""
    skip = {opts.image_col, opts.group_col, opts.label_col, *REQUIRED_COLUMNS}
    return (["label_original"] if label_map else []) + [c for c in columns if c not in skip and c != "label_original"]


def check_options(opts):
    if opts.val < 0 or opts.test < 0 or opts.val + opts.test >= 1:
        raise MedclfError(f"--val {opts.val} --test {opts.test}: each must be >= 0 and together below 1")
    if opts.folds == 1 or opts.folds < 0:
        raise MedclfError(f"--folds {opts.folds}: use 0 (no folds) or at least 2")
    if opts.repeats < 1 or (opts.repeats > 1 and not opts.folds):
        raise MedclfError(f"--repeats {opts.repeats}: give a whole number of at least 1, with --folds K (repeated "
                          "K-fold cross-validation)")
    if opts.metadata is None and opts.data_root is None:
        raise MedclfError("no input: pass --data-root DIR (class folders) or --metadata CSV --image-dir DIR")
    if opts.metadata is None and opts.group_col:
        raise MedclfError("--group-col needs --metadata (class folders have no columns); drop --group-col")
    if opts.metadata is None and opts.stratify_by:
        raise MedclfError("--stratify-by needs --metadata (class folders have no columns); drop --stratify-by")


def collect_images(opts):
    """Step 1: (items, metadata columns, skipped non-image files, absolute data root)."""
    if opts.metadata:
        data_root = Path(opts.image_dir or Path(opts.metadata).parent)
        items, columns = load_metadata(opts.metadata, data_root, opts.image_col, opts.label_col,
                                       opts.image_ext, opts.group_col, opts.stratify_by)
        skipped = []
    else:
        data_root = Path(opts.data_root)
        items, skipped = scan_class_folders(data_root, exclude=[Path(opts.out)])
        columns = []
    data_root = data_root.resolve()
    for s in skipped:
        _warn(f"{data_root / s}: not an image file (by extension); skipped")
    return items, columns, skipped, data_root


def select_classes(items, opts):
    """--label-map, then --classes (a subset leaves the other classes out, counted).
    Returns (items sorted by path, the label map, {left-out class: images})."""
    label_map = parse_label_map(opts.label_map)
    if label_map:
        apply_label_map(items, label_map)
    items = sorted(items, key=lambda i: i.path)
    excluded_classes = {}
    if opts.classes:
        wanted = {c.strip() for c in opts.classes}
        excluded_classes = dict(sorted(Counter(i.label for i in items if i.label not in wanted).items()))
        items = [i for i in items if i.label in wanted]
        if excluded_classes and not opts.quiet:
            print("left out by --classes: " + ", ".join(f"{c} ({n} images)" for c, n in excluded_classes.items()))
    return items, label_map, excluded_classes


def read_images(items, data_root, opts):
    """Step 2: read every image once; unreadable files are warned about and excluded. Readable
    items get their SHA-256 and fingerprint (with --dedup). Returns (readable items, unreadable)."""
    from tqdm import tqdm

    paths = [data_root / item.path for item in items]
    if opts.dedup:
        results = dedup_lib.fingerprint_files(paths, progress=not opts.quiet)
    else:
        results = [_read_or_error(p) for p in tqdm(paths, desc="reading images", unit="img", disable=opts.quiet,
                                                   file=sys.stderr)]
    readable, unreadable = [], []
    for item, result in zip(items, results):
        if isinstance(result, UnreadableImageError):
            _warn(f"{result}; excluded")
            unreadable.append({"path": item.path, "label": item.label, "reason": result.reason})
            continue
        if opts.dedup:
            item.fingerprint, item.sha256 = result, result.sha256
        readable.append(item)
    if not readable:
        raise MedclfError(f"{data_root}: none of the images could be read; see the warnings above")
    return readable, unreadable


def detect_duplicates(items, opts):
    """Step 3a: exact and near-duplicate clusters (None with --no-dedup)."""
    if not opts.dedup:
        return None
    return duplicates_review.detect_duplicates([i.fingerprint for i in items], [i.path for i in items], opts,
                                               progress=not opts.quiet)


def build_groups(items, dup_report, opts):
    """Step 3b: groups = group-column values merged (union) with duplicate clusters.
    Returns (components: lists of item indices, group name of each item)."""
    uf = dedup_lib.UnionFind(len(items))
    if opts.group_col:
        first_of = {}
        for i, item in enumerate(items):
            uf.union(first_of.setdefault(item.group_value, i), i)
    for cluster in (dup_report.clusters if dup_report else []):
        for j in cluster[1:]:
            uf.union(cluster[0], j)
    components = uf.components()
    group_of = [None] * len(items)
    for members in components:
        # A group's name: its smallest group-column value, else its first path (a singleton's own path).
        name = min(items[i].group_value for i in members) if opts.group_col else items[members[0]].path
        for i in members:
            group_of[i] = name
    return components, group_of


def fold_seed(seed, repeat):
    """The seed of fold assignment `repeat` (0-based). Repeat 0 keeps the seed folds always had
    (seed + 1), so a splits.csv written before --repeats existed is reproduced byte for byte."""
    return int(seed) + 1 if repeat == 0 else (int(seed) + 1) * 1_000_003 + int(repeat)


def fold_column(repeat):
    """splits.csv column of fold assignment `repeat`: fold, fold_r1, fold_r2, ..."""
    return "fold" if repeat == 0 else f"fold_r{repeat}"


def assign_folds(group_counts, split_of_group, folds, repeats, seed, strata=None):
    """Grouped, stratified folds over the non-test groups, once per repeat (each from
    fold_seed(seed, repeat)). Returns (repeats, groups) fold indices, -1 for test groups."""
    fold_of_group = np.full((repeats, len(group_counts)), -1)
    non_test = [g for g in range(len(group_counts)) if SPLITS[split_of_group[g]] != "test"]
    non_test_strata = None if strata is None else [strata[g] for g in non_test]
    for repeat in range(repeats):
        assignment = assign_groups(group_counts[non_test], [1.0] * folds, fold_seed(seed, repeat), non_test_strata)
        fold_of_group[repeat, non_test] = assignment
    return fold_of_group


def group_strata(items, components, column):
    """Each group's value of the --stratify-by column: the most frequent among its images (the
    first in sorted order on ties); an empty cell counts as the value "(missing)"."""
    if not column:
        return None
    values = []
    for members in components:
        seen = Counter((items[i].extra.get(column) or "").strip() or "(missing)" for i in members)
        values.append(min(seen, key=lambda v: (-seen[v], v)))
    return values


def assign_splits(items, classes, components, opts):
    """Step 4: whole groups to train/val/test at random within strata (medclf.prepare.assignment),
    then optional folds over the non-test groups (`opts.repeats` assignments). Returns (split of
    each item, for each repeat the fold of each item or None, the assignment record)."""
    class_index = {c: k for k, c in enumerate(classes)}
    group_counts = np.zeros((len(components), len(classes)))
    for g, members in enumerate(components):
        for i in members:
            group_counts[g, class_index[items[i].label]] += 1
    ratios = [1.0 - opts.val - opts.test, opts.val, opts.test]
    _check_class_sizes(classes, [{items[i].label for i in m} for m in components], ratios, opts.folds)
    strata = group_strata(items, components, opts.stratify_by)
    split_of_group = assign_groups(group_counts, ratios, opts.seed, strata)
    repeats = opts.repeats if opts.folds else 0
    fold_of_group = assign_folds(group_counts, split_of_group, opts.folds, repeats, opts.seed, strata)
    deviation, largest = class_share_deviation(group_counts, split_of_group, ratios, SPLITS, classes)
    record = {"method": ASSIGNMENT,
              "strata": ["class", "group size band"] + ([f"column {opts.stratify_by}"] if opts.stratify_by else []),
              "stratify_by": opts.stratify_by,
              "group_size_bands": size_band_labels(group_counts),
              "class_share_deviation": deviation, "largest_class_share_deviation": largest}
    split_of, fold_of = [None] * len(items), [[None] * len(items) for _ in range(repeats)]
    for g, members in enumerate(components):
        for i in members:
            split_of[i] = SPLITS[split_of_group[g]]
            for repeat in range(repeats):
                fold = int(fold_of_group[repeat, g])
                fold_of[repeat][i] = fold if fold >= 0 else None
    return split_of, fold_of, record


def splits_frame(items, classes, split_of, fold_of, group_of, columns, label_map, opts):
    """Step 5a: the rows of splits.csv and its extra columns (label_original, metadata)."""
    import pandas as pd

    class_index = {c: k for k, c in enumerate(classes)}
    rows = []
    for i, item in enumerate(items):
        row = {"path": item.path, "label": item.label, "label_index": class_index[item.label],
               "split": split_of[i], "group": group_of[i]}
        for repeat, folds in enumerate(fold_of):
            row[fold_column(repeat)] = "" if folds[i] is None else folds[i]
        if label_map:
            row["label_original"] = item.label_original
        for column in columns:
            if column not in row and column not in REQUIRED_COLUMNS:
                row[column] = item.extra.get(column, "")
        rows.append(row)
    fold_columns = [fold_column(r) for r in range(1, len(fold_of))]  # right after `fold`
    extra_columns = fold_columns + (["label_original"] if label_map else []) + [
        c for c in columns if c not in REQUIRED_COLUMNS and c not in ("fold", "label_original", *fold_columns)
    ]
    return pd.DataFrame(rows), extra_columns


def _json_equal(path, obj):
    try:
        return read_json(path) == json.loads(json.dumps(obj))
    except MedclfError:  # not valid JSON: certainly different
        return False


def write_outputs(out, frame, extra_columns, info, overwrite=False, before=None):
    """Step 5b: splits.csv and partition.json, atomically. An existing, different pair is kept
    unless `overwrite`: runs and organized folders made from it would silently stop matching.
    `before()` writes companion files (the duplicate review) once replacing is allowed."""
    text = splits_csv_text(frame, extra_columns)
    splits_path, info_path = out / "splits.csv", out / "partition.json"
    changed = [p.name for p, same in (
        (splits_path, lambda: splits_path.read_bytes() == text.encode("utf-8")),
        (info_path, lambda: _json_equal(info_path, info)),
    ) if p.is_file() and not same()]
    if changed and not overwrite:
        outdated = info_path.is_file() and outdated_assignment(_read_or_empty(info_path))
        if outdated:
            raise MedclfError(
                f"{out}: holds a split made by an earlier medclf ({outdated}); pass --overwrite to split "
                "again (runs keep their own copy of the split they trained on), or choose another --out")
        raise MedclfError(
            f"{out}: already holds a different {' and '.join(changed)} (another seed, input or option); "
            "pass --overwrite to replace it (runs keep their own copy of the split they trained on), "
            "or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if before is not None:
        before()
    write_text(splits_path, text)
    write_json(info_path, info)


def _read_or_empty(path):
    try:
        return read_json(path)
    except MedclfError:
        return {}


def _read_or_error(path):
    try:
        read_image(path)
    except UnreadableImageError as exc:
        return exc
    return None


def _duplicate_clusters_info(items, dup_report, split_of, label_of):
    exact, near = [], []
    exact_members = set()
    for cluster in dup_report.exact_clusters:
        exact_members.update(cluster)
        exact.append({"paths": [items[i].path for i in cluster],
                      "labels": sorted({label_of[i] for i in cluster}),
                      "splits": sorted({split_of[i] for i in cluster})})
    for cluster in dup_report.clusters:
        near.append({"paths": [items[i].path for i in cluster],
                     "labels": sorted({label_of[i] for i in cluster}),
                     "splits": sorted({split_of[i] for i in cluster})})
    return exact, near


def _partition_info(opts, classes, positive, data_root, items, split_of, fold_of, group_of, components,
                    dup_report, unreadable, skipped, label_map):
    labels = [i.label for i in items]
    counts = {s: {c: 0 for c in classes} for s in SPLITS}
    for label, split in zip(labels, split_of):
        counts[split][label] += 1
    totals = {c: sum(counts[s][c] for s in SPLITS) for c in classes}

    # Leakage report: recomputed from the final assignment, not assumed from the algorithm.
    splits_of_group = {}
    for g, s in zip(group_of, split_of):
        splits_of_group.setdefault(g, set()).add(s)
    crossing_groups = sorted(g for g, s in splits_of_group.items() if len(s) > 1)
    leakage = {"groups_across_splits": len(crossing_groups), "crossing_groups": crossing_groups[:100]}
    duplicates = {"enabled": bool(opts.dedup)}
    if opts.dedup:
        by_digest = {}
        for item, split in zip(items, split_of):
            by_digest.setdefault(item.sha256, set()).add(split)
        leakage["exact_duplicates_across_splits"] = sum(1 for s in by_digest.values() if len(s) > 1)
        crossing_near = [c for c in dup_report.near_pairs if split_of[c.i] != split_of[c.j]]
        leakage["near_duplicates_across_splits"] = len(crossing_near)
        leakage["near_duplicate_pairs_across_splits"] = [
            {"paths": [items[c.i].path, items[c.j].path], "verdict": c.verdict} for c in crossing_near[:100]
        ]
        exact, merged = _duplicate_clusters_info(items, dup_report, split_of, labels)
        cross_class = [c for c in merged if len(c["labels"]) > 1]
        for c in cross_class:
            shown = ", ".join(c["paths"][:8]) + (f" and {len(c['paths']) - 8} more" if len(c["paths"]) > 8 else "")
            _warn(f"{len(c['paths'])} duplicates with different labels ({', '.join(c['labels'])}), kept in one "
                  f"split: {shown}; check these labels (all listed in partition.json), or mark pairs that are "
                  "different pictures in a --duplicate-decisions file (see duplicates.csv)")
        duplicates.update({
            "exact": {"method": "sha256 of file bytes", "clusters": len(exact),
                      "files": sum(len(c["paths"]) for c in exact), "members": exact},
            "near": duplicates_review.near_info(dup_report, opts),
            "clusters": {"description": "unions of exact duplicates and verified near-duplicate pairs",
                         "count": len(merged), "files": sum(len(c["paths"]) for c in merged),
                         "members": merged},
            "clusters_with_different_labels": len(cross_class),
            "largest_group": duplicates_review.largest_group_info(components, group_of, items, dup_report, opts,
                                                                   _warn),
        })
    group_sizes = Counter(len(m) for m in components)
    info = {
        "schema": SCHEMA,
        "classes": classes,
        "positive_class": positive,
        "seed": opts.seed,
        "ratios": {"train": round(1.0 - opts.val - opts.test, 10), "val": opts.val, "test": opts.test},
        "folds": opts.folds,
        "group_column": opts.group_col,
        "data_root": str(data_root),
        "metadata": str(Path(opts.metadata).resolve()) if opts.metadata else None,
        "image_column": opts.image_col if opts.metadata else None,
        "label_column": opts.label_col if opts.metadata else None,
        "image_extension": opts.image_ext if opts.metadata else None,
        "label_map": label_map,
        "duplicates": duplicates,
        "n_images": len(items),
        "n_groups": len(components),
        "group_sizes": {str(k): v for k, v in sorted(group_sizes.items())},
        "counts": {**counts, "total": totals},
        "unreadable": {"count": len(unreadable), "files": unreadable},
        "skipped_non_images": {"count": len(skipped), "files": skipped},
        "leakage": leakage,
    }
    if opts.folds:
        info.update(_fold_info(opts, classes, labels, fold_of, group_of))
        leakage["groups_across_folds"] = info.pop("groups_across_folds")
    return info


def _fold_info(opts, classes, labels, fold_of, group_of):
    """partition.json's fold records: counts per fold (repeat 0 as before, then every repeat),
    each repeat's column and seed, and the groups found in more than one fold of a repeat."""
    counts_by_repeat, crossing = [], 0
    for folds in fold_of:
        counts = {str(f): {c: 0 for c in classes} for f in range(opts.folds)}
        folds_of_group = {}
        for label, fold, group in zip(labels, folds, group_of):
            if fold is not None:
                counts[str(fold)][label] += 1
                folds_of_group.setdefault(group, set()).add(fold)
        crossing += sum(1 for f in folds_of_group.values() if len(f) > 1)
        counts_by_repeat.append(counts)
    return {"fold_counts": counts_by_repeat[0], "repeats": len(fold_of),
            "fold_repeats": [{"repeat": r, "column": fold_column(r), "seed": fold_seed(opts.seed, r),
                              "fold_counts": counts} for r, counts in enumerate(counts_by_repeat)],
            "groups_across_folds": crossing}


def leakage_free(info):
    """True when no group, exact duplicate or near duplicate is found in more than one split (and
    no group in more than one fold of a repeat)."""
    return all(v == 0 for k, v in info["leakage"].items()
               if k.endswith(("_across_splits", "_across_folds")) and isinstance(v, int))


def format_summary(info):
    """The per-split, per-class table and the leakage report, as printed by the command."""
    classes = info["classes"]
    width = max(8, *(len(c) for c in classes))
    header = f"{'split':<6} " + " ".join(f"{c:>{width}}" for c in classes) + f" {'total':>7}"
    lines = [header]
    totals = info["counts"]["total"]
    n_total = sum(totals.values())
    for split in SPLITS:
        row = info["counts"][split]
        n = sum(row.values())
        cells = " ".join(f"{row[c]:>{width - 7}} ({row[c] / n if n else 0:4.0%})" for c in classes)
        lines.append(f"{split:<6} {cells} {n:>7}")
    lines.append(f"{'all':<6} " + " ".join(
        f"{totals[c]:>{width - 7}} ({totals[c] / n_total:4.0%})" for c in classes) + f" {n_total:>7}")
    leak = info["leakage"]
    dup = info["duplicates"]
    lines.append(f"images: {info['n_images']} in {info['n_groups']} groups; unreadable: "
                 f"{info['unreadable']['count']}; skipped non-images: {info['skipped_non_images']['count']}")
    if dup["enabled"]:
        lines.append(
            f"duplicates: {dup['exact']['clusters']} exact clusters ({dup['exact']['files']} files); "
            f"{dup['clusters']['count']} clusters with verified near duplicates ({dup['clusters']['files']} files); "
            f"{dup['near']['verified_pairs']} of {dup['near']['candidate_pairs']} candidate pairs verified; "
            f"largest group {dup['largest_group']['size']} images")
    parts = [f"groups {leak['groups_across_splits']}"]
    if dup["enabled"]:
        parts += [f"exact duplicates {leak['exact_duplicates_across_splits']}",
                  f"near duplicates {leak['near_duplicates_across_splits']}"]
    verdict = "OK" if leakage_free(info) else "LEAKAGE"
    lines.append(f"leakage across splits: {', '.join(parts)} [{verdict}]")
    return "\n".join(lines)

