"""Results per patient or lesion (`medclf report --level group`): one prediction per group.

A test split with several images per group (lesion, patient, duplicate cluster: splits.csv's
`group` column) can be scored per image (the default) or per group. Per group, the group's
prediction is derived from its images' probabilities:
    mean  the mean of its images' probability vectors (the default);
    max   the probability vector of its image with the highest probability of the positive class
          (the "most suspicious image" rule; needs a positive class).
The group is labelled with its images' label; a group whose images carry different labels is
refused, naming it. Images the quality gate rejected are left out first (as the per-image report
does), so a group whose images were all rejected is absent. The predictions file of the run keeps
the image level: the derived record is written beside it (`predictions_<split>_group-<reduce>.json`,
its `level` saying how it was made) and scored like any predictions file.
"""

from pathlib import Path

import numpy as np

from medclf.core import layout
from medclf.core.errors import MedclfError
from medclf.core.predictions import build_record, passed_subset
from medclf.core.run_config import read_run_config

REDUCES = ("mean", "max")


def run_split_frame(run_dir, needed_for="--level group"):
    """The rows of the splits.csv a run (or the run holding a derived folder such as
    calibrated_temperature/) was trained on: path, label, split, group and metadata columns. A
    derived folder with a splits.csv of its own (external_<name>/, `medclf test --external`) has
    scored that file's images: its rows are those."""
    from medclf.core.splits import load_run_splits, read_splits

    if layout.is_external_folder(run_dir) and (Path(run_dir) / "splits.csv").is_file():
        return read_splits(Path(run_dir) / "splits.csv").frame
    for folder in (Path(run_dir), Path(run_dir).parent):
        config_path = layout.config_file(folder)
        if config_path.is_file():
            config = read_run_config(config_path, required={})
            if not (config.get("split_files") or config.get("splits_file") or (config.get("arguments") or {}).get("splits")):
                break
            return load_run_splits(folder, config).frame
    raise MedclfError(f"{run_dir}: no config.json naming the run's split here or in the folder above, so the rows "
                      f"of its images in splits.csv are unknown; {needed_for} needs a run folder of `medclf train`")


def run_groups(run_dir):
    """{path: group} of the split a run was trained on (run_split_frame)."""
    frame = run_split_frame(run_dir)
    return dict(zip(frame["path"].astype(str), frame["group"].astype(str)))


def image_groups(run_dir, record):
    """The group of each image of a predictions record, in its order, from the run's splits.csv;
    None when the run's split is not found or does not list every image (the intervals then count
    images, as the report says)."""
    try:
        group_of = run_groups(run_dir)
    except MedclfError:
        return None
    paths = [str(p) for p in record.get("paths") or []]
    if not paths or any(p not in group_of for p in paths):
        return None
    return [group_of[p] for p in paths]


def _positive_index(record, positive):
    classes = [str(c) for c in record["classes"]]
    name = positive if positive is not None else record.get("positive_class")
    if name is None or str(name) not in classes:
        raise MedclfError("--group-reduce max takes the image with the highest probability of the positive class; "
                          "this run has none: name it with --positive, or use --group-reduce mean")
    return classes.index(str(name))


def group_level_record(record, group_of, reduce="mean", positive=None, source="predictions"):
    """The predictions record with one row per group (see the module docstring)."""
    if reduce not in REDUCES:
        raise MedclfError(f"--group-reduce {reduce}: use one of {', '.join(REDUCES)}")
    passed = passed_subset(record)
    rows = passed if passed is not None else record
    paths, labels = [str(p) for p in rows["paths"]], [int(y) for y in rows["labels"]]
    probabilities = np.asarray(rows["probabilities"], dtype=np.float64)
    unknown = [p for p in paths if p not in group_of]
    if unknown:
        raise MedclfError(f"{source}: {len(unknown)} image(s) are not in the run's splits.csv (e.g. {unknown[0]}); "
                          "the group of each image comes from there")
    members = {}
    for i, path in enumerate(paths):
        members.setdefault(group_of[path], []).append(i)
    classes = [str(c) for c in record["classes"]]
    pick = _positive_index(record, positive) if reduce == "max" else None
    names, group_labels, group_probabilities = [], [], []
    for group in sorted(members):
        index = members[group]
        found = sorted({labels[i] for i in index})
        if len(found) > 1:
            raise MedclfError(
                f"{source}: group {group} holds images labelled {' and '.join(classes[k] for k in found)} "
                f"({', '.join(paths[i] for i in index[:4])}); one label per group is needed to score groups: "
                "check those labels, or report per image (--level image)")
        names.append(group)
        group_labels.append(found[0])
        if pick is None:
            group_probabilities.append(probabilities[index].mean(axis=0))
        else:
            group_probabilities.append(probabilities[index[int(np.argmax(probabilities[index, pick]))]])
    level = {"unit": "group", "reduce": reduce, "n_images": len(paths), "n_groups": len(names),
             "derived_from": source,
             "quality_gate": "rejected images left out" if passed is not None else None}
    return build_record(record.get("split"), record["classes"], record.get("positive_class"), record.get("model"),
                        names, group_labels, np.asarray(group_probabilities), level=level)


def group_predictions_file(run_dir, split, reduce):
    return Path(run_dir) / f"predictions_{split}_group-{reduce}.json"


def describe(level):
    """One sentence for report.md."""
    how = ("the mean of its images' probabilities" if level["reduce"] == "mean"
           else "its image with the highest probability of the positive class")
    gate = "; images the quality gate rejected left out" if level.get("quality_gate") else ""
    return (f"**Unit of analysis: groups** (splits.csv's `group`: patient, lesion or duplicate cluster). "
            f"{level['n_images']} images in {level['n_groups']} groups; one prediction per group, {how}{gate}; "
            f"derived from {level['derived_from']}.")
