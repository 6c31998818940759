"""Organize images into folders from splits.csv, without ever overwriting or losing one.

Layouts:
  imagefolder  OUT/<split>/<class>/<file>   (torchvision ImageFolder, fastai, Keras)
  seed002      OUT/bin/<file> (all classes flattened), OUT/csv/{train,val,test}.csv
               (headerless `filename,class_idx`), OUT/models/, OUT/results/
Modes: link (hard link; falls back to a symbolic link, then a copy, with a note), copy, move.

Every destination is planned and checked first: if two images would land on the same path,
or a different file already sits at a destination, all such collisions are reported and
nothing is touched. After `move`, splits.csv (and partition.json's data_root) are rewritten
atomically so they point where the files now are; an interrupted move can simply be rerun.
"""

import csv
import filecmp
import io
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from medclf.errors import MedclfError
from medclf.fileio import write_json, write_text
from medclf.splits import REQUIRED_COLUMNS, SPLITS, read_splits, write_splits_csv

LAYOUTS = ("imagefolder", "seed002")
MODES = ("link", "copy", "move")
SEED002_FOLDERS = ("bin", "csv", "models", "results")


@dataclass
class Planned:
    row: int
    source: Path
    destination: Path
    new_path: str  # relative to the output folder


def plan(table, out, layout):
    out = Path(out)
    planned = []
    for k, record in enumerate(table.frame.itertuples(index=False)):
        source = Path(table.resolve(record.path))
        name = Path(record.path).name
        if layout == "imagefolder":
            relative = f"{record.split}/{record.label}/{name}"
        elif layout == "seed002":
            relative = f"bin/{name}"
        else:
            raise MedclfError(f"--layout {layout}: unknown layout; use one of {', '.join(LAYOUTS)}")
        planned.append(Planned(k, source, out / relative, relative))
    return planned


def _same_file(a, b):
    try:
        return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def find_collisions(planned, mode):
    """All problems, as messages, found before anything is touched."""
    problems = []
    by_destination = {}
    for p in planned:
        by_destination.setdefault(p.destination, []).append(p)
    for destination, group in sorted(by_destination.items()):
        if len(group) > 1:
            problems.append(f"{destination}: {len(group)} images would get this name: "
                            + ", ".join(str(p.source) for p in group))
    for p in planned:
        if len(by_destination[p.destination]) > 1:
            continue
        source_exists = p.source.exists()
        if not source_exists:
            if mode == "move" and p.destination.exists():
                continue  # moved by an earlier, interrupted run
            problems.append(f"{p.source}: image listed in splits.csv is missing")
            continue
        if p.destination.exists() or p.destination.is_symlink():
            if mode == "move" and os.path.samefile(p.source, p.destination):
                continue
            if mode != "move" and _same_file(p.source, p.destination):
                continue  # already organized (rerun)
            problems.append(f"{p.destination}: already exists and differs from {p.source}")
    return problems


def _link(source, destination, notes):
    try:
        os.link(source, destination)
        return
    except OSError as exc:
        first = exc
    try:
        os.symlink(source.resolve(), destination)
        notes["symlink"] = notes.get("symlink", 0) + 1
        notes.setdefault("reason", str(first))
        return
    except OSError:
        pass
    shutil.copy2(source, destination)
    notes["copy"] = notes.get("copy", 0) + 1
    notes.setdefault("reason", str(first))


def _seed002_csvs(table):
    """Headerless `filename,class_idx` per split, as seed 002's train/test scripts read them."""
    texts = {}
    for split in SPLITS:
        rows = table.rows(split)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for path, index in zip(rows["path"], rows["label_index"]):
            writer.writerow([Path(path).name, int(index)])
        texts[split] = buffer.getvalue()
    return texts


def write_seed002_split_csvs(table, folder):
    for split, text in _seed002_csvs(table).items():
        write_text(Path(folder) / f"{split}.csv", text)


def organize(splits, out, mode="link", layout="imagefolder", data_root=None, quiet=False):
    """Lay the images of `splits` (a splits.csv or a folder holding it) out under `out`."""
    if mode not in MODES:
        raise MedclfError(f"--mode {mode}: unknown mode; use one of {', '.join(MODES)}")
    table = read_splits(splits, data_root=data_root)
    out = Path(out)
    planned = plan(table, out, layout)
    problems = find_collisions(planned, mode)
    if problems:
        raise MedclfError(
            f"{len(problems)} problem(s) found, nothing was changed: {'; '.join(problems)}; "
            "fix: restore missing images, rename or remove the clashing files, use --layout imagefolder "
            "(keeps classes apart), or choose an empty --out folder"
        )
    from tqdm import tqdm

    notes = {}
    done = 0
    for p in tqdm(planned, desc=f"organize ({mode})", unit="img", disable=quiet, file=sys.stderr):
        if mode == "move" and not p.source.exists():
            continue  # already moved
        if p.destination.exists() or p.destination.is_symlink():
            if mode != "move" or os.path.samefile(p.source, p.destination):
                continue
        p.destination.parent.mkdir(parents=True, exist_ok=True)
        if mode == "copy":
            shutil.copy2(p.source, p.destination)
        elif mode == "link":
            _link(p.source, p.destination, notes)
        else:
            _move_no_overwrite(p.source, p.destination)
        done += 1
    if layout == "seed002":
        for folder in SEED002_FOLDERS:
            (out / folder).mkdir(parents=True, exist_ok=True)
        write_seed002_split_csvs(table, out / "csv")

    # Point a splits.csv at the organized files. Re-read the file as text so that every other
    # cell is written back exactly as it was (no "007" -> 7, no "1" -> "1.0").
    source_csv = Path(table.source)
    target_csv = source_csv if mode == "move" else out / "splits.csv"
    wrote_splits = None
    if source_csv.name == "splits.csv":
        if mode != "move" and target_csv.resolve() == source_csv.resolve():
            wrote_splits = None  # never repoint the input splits.csv at copies or links
        else:
            info = dict(table.info)
            info.setdefault("schema", "medclf.partition/1")
            info["organized"] = {"layout": layout, "mode": mode,
                                 "from_data_root": str(Path(table.data_root).resolve())}
            info["data_root"] = str(out.resolve())
            # Write partition.json first: a reader that sees the new splits.csv also sees its root.
            write_json(target_csv.parent / "partition.json", info)
            import pandas as pd

            new_frame = pd.read_csv(source_csv, dtype=str, keep_default_na=False, encoding="utf-8-sig")
            new_frame["path"] = [p.new_path for p in planned]
            extra = [c for c in new_frame.columns if c not in REQUIRED_COLUMNS and c != "fold"]
            write_splits_csv(target_csv, new_frame, extra_columns=extra)
            wrote_splits = target_csv
    summary = {"out": str(out), "layout": layout, "mode": mode, "images": len(planned), "placed": done,
               "splits_csv": str(wrote_splits) if wrote_splits else None, "link_fallbacks": notes}
    if not quiet:
        print(f"organized {len(planned)} images into {out} ({layout}, {mode}; {done} placed now)")
        if notes:
            print(f"note: hard links were not possible ({notes['reason']}): "
                  f"{notes.get('symlink', 0)} symbolic links, {notes.get('copy', 0)} copies instead")
        if wrote_splits:
            print(f"splits.csv for the organized files: {wrote_splits}")
    return summary


def _move_no_overwrite(source, destination):
    if destination.exists():
        raise MedclfError(f"{destination}: appeared while organizing; nothing overwritten, rerun organize")
    try:
        # os.link + unlink never replaces an existing file, unlike os.rename on POSIX.
        os.link(source, destination)
        os.unlink(source)
    except OSError:
        shutil.move(str(source), str(destination))
