"""Organize images into folders from splits.csv, without ever overwriting or losing one.

Layouts:
  imagefolder  OUT/<split>/<class>/<path below the class folder>   (torchvision ImageFolder,
               fastai, Keras); nested sources keep their sub-folders: class/patient/slice.png
               -> train/class/patient/slice.png, so equal file names of different patients
               never collide
  seed002      OUT/bin/<file> (all classes flattened), OUT/csv/{train,val,test}.csv
               (headerless `filename,class_idx`), OUT/models/, OUT/results/
Modes: link (hard link; falls back to a symbolic link, then a copy, with a note), copy, move.

Every destination is planned and checked first: if two images would land on the same path,
or a different file already sits at a destination, all such collisions are reported and
nothing is touched. After `move`, splits.csv (and partition.json's data_root) are rewritten
atomically so they point where the files now are; an interrupted move can simply be rerun.

Each organize writes OUT/.medclf-organize.json (the manifest: SHA-256 of the splits file, layout,
mode, every file it writes) before placing a file. A target folder is accepted when its layout
folders are empty, or hold only files of a manifest written from the same splits (a rerun or an
interrupted run). Files of another splits are refused, or with `--replace` deleted first (only
the files listed in the manifest, never one organize did not write, never images it moved
there); files organize did not write are always refused, so no stale image is ever left beside
the new split.
"""

import csv
import filecmp
import io
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from medclf.core import schemas
from medclf.core.errors import MedclfError
from medclf.core.fileio import read_json, sha256_file, write_json, write_text
from medclf.core.splits import REQUIRED_COLUMNS, SPLITS, read_splits, write_splits_csv

LAYOUTS = ("imagefolder", "seed002")
MODES = ("link", "copy", "move")
SEED002_FOLDERS = ("bin", "csv", "models", "results")
MANIFEST_NAME = ".medclf-organize.json"


@dataclass
class Planned:
    row: int
    source: Path
    destination: Path
    new_path: str  # relative to the output folder


def _common_parent(paths):
    """The folder parts every path starts with (e.g. ('images',) for HAM10000's images/*.jpg)."""
    parents = [PurePosixPath(p).parent.parts for p in paths]
    common = parents[0] if parents else ()
    for parts in parents[1:]:
        k = 0
        while k < min(len(common), len(parts)) and common[k] == parts[k]:
            k += 1
        common = common[:k]
    return common


def _below_class_folder(path, common, class_names):
    """The part of `path` to keep under OUT/<split>/<class>/: below the folders all images share
    and below the class folder itself, so sub-folders (patients, series) are kept."""
    rest = PurePosixPath(path).parts[len(common):]
    if len(rest) > 1 and rest[0] in class_names:
        rest = rest[1:]
    return "/".join(rest)


def plan(table, out, layout):
    if layout not in LAYOUTS:
        raise MedclfError(f"--layout {layout}: unknown layout; use one of {', '.join(LAYOUTS)}")
    out = Path(out)
    paths = [str(p).replace("\\", "/") for p in table.frame["path"]]
    common = _common_parent(paths)
    originals = table.frame["label_original"] if "label_original" in table.frame.columns else [None] * len(paths)
    planned = []
    for k, (path, split, label, original) in enumerate(zip(paths, table.frame["split"], table.frame["label"],
                                                           originals)):
        source = Path(table.resolve(path))
        if layout == "imagefolder":
            relative = f"{split}/{label}/{_below_class_folder(path, common, {str(label), str(original)})}"
        else:
            relative = f"bin/{PurePosixPath(path).name}"
        planned.append(Planned(k, source, out / relative, relative))
    return planned


def _same_file(a, b):
    try:
        return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def find_collisions(planned, mode, removed=()):
    """All problems, as messages, found before anything is touched. `removed`: destinations that
    --replace deletes before placing (files an earlier organize wrote)."""
    removed = set(removed)
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
        if p.destination in removed:
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


# ---------------------------------------------------------------- the manifest and the target

def read_manifest(out):
    path = Path(out) / MANIFEST_NAME
    if not path.is_file():
        return None
    manifest = read_json(path)
    if not isinstance(manifest, dict) or manifest.get("schema") != schemas.ORGANIZE_MANIFEST \
            or not isinstance(manifest.get("files"), list):
        raise MedclfError(f"{path}: not a medclf organize manifest ({schemas.ORGANIZE_MANIFEST}); "
                          "leave the file alone or choose an empty --out")
    return manifest


def _outputs_written(planned, layout, writes_splits):
    """Every file organize writes under OUT, relative to OUT."""
    files = [p.new_path for p in planned]
    if layout == "seed002":
        files += [f"csv/{split}.csv" for split in SPLITS]
    if writes_splits:
        files += ["splits.csv", "partition.json"]
    return sorted(set(files))


def _files_present(out, relative_files):
    """Files already under the top-level folders (and files) organize writes to, relative to OUT."""
    out = Path(out)
    present = set()
    for top in sorted({f.split("/", 1)[0] for f in relative_files}):
        where = out / top
        if where.is_file() or where.is_symlink():
            present.add(top)
        elif where.is_dir():
            present.update(p.relative_to(out).as_posix() for p in where.rglob("*") if p.is_file() or p.is_symlink())
    return present


def _same_organize(manifest, splits_sha, layout):
    """The manifest was written by organizing these splits in this layout (a rerun)."""
    return manifest is not None and splits_sha in manifest.get("splits_sha256", []) \
        and manifest.get("layout") == layout


def files_to_replace(out, present, manifest, splits_sha, layout, replace):
    """Check the target folder; return the files (relative to OUT) that --replace deletes first.
    Refuses files organize did not write, and files of other splits (or another layout) without
    --replace. `present`: files under the folders organize writes to, and those of the manifest."""
    ours = set(manifest["files"]) if manifest else set()
    foreign = sorted(present - ours)
    if foreign:
        raise MedclfError(
            f"{out}: holds {len(foreign)} file(s) that medclf organize did not write there "
            f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); nothing was changed. "
            "Move them away or choose an empty --out (they would end up beside the new split)")
    if manifest is None or _same_organize(manifest, splits_sha, layout) or not present:
        return []  # an empty target, or a rerun of the same splits
    earlier = f"{manifest.get('splits', 'another splits file')}, layout {manifest.get('layout')}"
    if not replace:
        raise MedclfError(
            f"{out}: organized earlier from other splits ({earlier}); nothing was changed. Use --replace to "
            f"delete the {len(present)} file(s) organize wrote there first, or choose an empty --out")
    if manifest.get("mode") == "move":
        raise MedclfError(
            f"{out}: the images there were moved in by an earlier `organize --mode move` from {earlier} and are "
            "the only copies, so --replace will not delete them; nothing was changed. Choose another --out")
    return sorted(present)


def _delete_earlier_outputs(out, relative_files):
    out = Path(out)
    for relative in relative_files:
        (out / relative).unlink()
    for folder in sorted({(out / r).parent for r in relative_files}, key=lambda p: -len(p.parts)):
        while folder != out and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent


def _write_manifest(out, source_csv, splits_shas, layout, mode, files, complete):
    write_json(Path(out) / MANIFEST_NAME, {
        "schema": schemas.ORGANIZE_MANIFEST, "splits": str(Path(source_csv).resolve()), "splits_sha256": splits_shas,
        "layout": layout, "mode": mode, "complete": complete, "files": files})


# ---------------------------------------------------------------- placing and repointing

def place_files(planned, mode, quiet):
    """Link, copy or move every planned image; returns (placed now, link fallback notes)."""
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
    return done, notes


def _splits_target(table, out, mode):
    """Where the splits.csv pointing at the organized files goes (None: not written)."""
    source_csv = Path(table.source)
    if source_csv.name != "splits.csv":
        return None
    if mode == "move":
        return source_csv
    target = Path(out) / "splits.csv"
    # Never repoint the input splits.csv at copies or links.
    return None if target.resolve() == source_csv.resolve() else target


def write_repointed_splits(table, planned, out, layout, mode, target_csv):
    """Point a splits.csv at the organized files. The file is re-read as text so that every other
    cell is written back exactly as it was (no "007" -> 7, no "1" -> "1.0")."""
    import pandas as pd

    info = dict(table.info)
    info.setdefault("schema", schemas.PARTITION)
    info["organized"] = {"layout": layout, "mode": mode, "from_data_root": str(Path(table.data_root).resolve())}
    info["data_root"] = str(Path(out).resolve())
    # Write partition.json first: a reader that sees the new splits.csv also sees its root.
    write_json(target_csv.parent / "partition.json", info)
    new_frame = pd.read_csv(table.source, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    new_frame["path"] = [p.new_path for p in planned]
    extra = [c for c in new_frame.columns if c not in REQUIRED_COLUMNS and c != "fold"]
    write_splits_csv(target_csv, new_frame, extra_columns=extra)


# ---------------------------------------------------------------- the stage

def organize(splits, out, mode="link", layout="imagefolder", data_root=None, quiet=False, replace=False):
    """Lay the images of `splits` (a splits.csv or a folder holding it) out under `out`."""
    if mode not in MODES:
        raise MedclfError(f"--mode {mode}: unknown mode; use one of {', '.join(MODES)}")
    table = read_splits(splits, data_root=data_root)
    out = Path(out)
    planned = plan(table, out, layout)
    target_csv = _splits_target(table, out, mode)
    files = _outputs_written(planned, layout, target_csv is not None and mode != "move")
    splits_sha = sha256_file(table.source)
    manifest = read_manifest(out)
    present = _files_present(out, files)
    if manifest is not None:
        present |= {f for f in manifest["files"] if (out / f).exists() or (out / f).is_symlink()}
    removed = files_to_replace(out, present, manifest, splits_sha, layout, replace)
    problems = find_collisions(planned, mode, removed={out / r for r in removed})
    if problems:
        raise MedclfError(
            f"{len(problems)} problem(s) found, nothing was changed: {'; '.join(problems)}; "
            "fix: restore missing images, rename or remove the clashing files, use --layout imagefolder "
            "(keeps classes apart), or choose an empty --out folder"
        )
    _delete_earlier_outputs(out, removed)
    shas = sorted(set(manifest["splits_sha256"])) if _same_organize(manifest, splits_sha, layout) else [splits_sha]
    _write_manifest(out, table.source, shas, layout, mode, files, complete=False)
    done, notes = place_files(planned, mode, quiet)
    if layout == "seed002":
        for folder in SEED002_FOLDERS:
            (out / folder).mkdir(parents=True, exist_ok=True)
        write_seed002_split_csvs(table, out / "csv")
    if target_csv is not None:
        write_repointed_splits(table, planned, out, layout, mode, target_csv)
        shas = sorted(set(shas) | {sha256_file(target_csv)})  # a moved splits.csv reruns as the same splits
    _write_manifest(out, table.source, shas, layout, mode, files, complete=True)
    summary = {"out": str(out), "layout": layout, "mode": mode, "images": len(planned), "placed": done,
               "replaced": len(removed), "splits_csv": str(target_csv) if target_csv else None,
               "link_fallbacks": notes}
    if not quiet:
        _print_summary(summary, notes)
    return summary


def _print_summary(summary, notes):
    print(f"organized {summary['images']} images into {summary['out']} ({summary['layout']}, {summary['mode']}; "
          f"{summary['placed']} placed now)")
    if summary["replaced"]:
        print(f"replaced: deleted {summary['replaced']} file(s) an earlier organize had written there")
    if notes:
        print(f"note: hard links were not possible ({notes['reason']}): "
              f"{notes.get('symlink', 0)} symbolic links, {notes.get('copy', 0)} copies instead")
    if summary["splits_csv"]:
        print(f"splits.csv for the organized files: {summary['splits_csv']}")


def _move_no_overwrite(source, destination):
    if destination.exists():
        raise MedclfError(f"{destination}: appeared while organizing; nothing overwritten, rerun organize")
    try:
        # os.link + unlink never replaces an existing file, unlike os.rename on POSIX.
        os.link(source, destination)
        os.unlink(source)
    except OSError:
        shutil.move(str(source), str(destination))
