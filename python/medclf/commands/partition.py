"""medclf partition: images -> splits.csv + partition.json (grouped, stratified, deduplicated)."""

import argparse
import sys
from pathlib import Path

from medclf.prepare.dedup import DEFAULT_MIN_INLIERS, DEFAULT_NEIGHBOURS

HELP = "split images into train/val/test (and folds) without leakage: writes splits.csv + partition.json"
DESCRIPTION = (
    "Split class folders (--data-root DIR, one subfolder per class) or a metadata CSV "
    "(--metadata CSV --image-dir DIR --image-col COL --label-col COL) into train/val/test, "
    "stratified by class. Whole groups (--group-col, plus exact and near-duplicate clusters) stay "
    "in one split, and go to splits at random within strata (class, group-size band, --stratify-by "
    "column), so a group's chance of landing in test does not depend on its size. A balance table "
    "compares the splits with train (standardized differences; a warning above 0.1). Every image is "
    "read once; unreadable files are warned about, excluded and counted. Output is byte-identical for "
    "the same inputs and seed. See docs/partition.md."
)


def _csv_list(text):
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(parser):
    source = parser.add_argument_group("input (one of)")
    source.add_argument("--data-root", type=Path, help="folder with one subfolder per class (e.g. no/ yes/)")
    source.add_argument("--metadata", type=Path, help="metadata CSV with one row per image")
    meta = parser.add_argument_group("metadata CSV")
    meta.add_argument("--image-dir", type=Path, help="folder the CSV's image names are relative to "
                      "(default: the CSV's folder)")
    meta.add_argument("--image-col", default="image_id", help="CSV column with the image file name")
    meta.add_argument("--label-col", default="label", help="CSV column with the class label")
    meta.add_argument("--image-ext", default=None,
                      help="extension appended to every image name, e.g. .jpg (default: a name without one "
                      "means the one file <name>.<image extension> in --image-dir)")
    meta.add_argument("--group-col", default=None,
                      help="CSV column whose value must stay in one split (lesion_id, patient_id)")
    meta.add_argument("--stratify-by", default=None, metavar="COL",
                      help="CSV column whose values are spread over the splits in the ratios, as the classes "
                      "are (e.g. dx_type: how the diagnosis was confirmed); default: none")
    parser.add_argument("--out", type=Path, required=True, help="output folder for splits.csv and partition.json")
    parser.add_argument("--val", type=float, default=0.1, help="fraction of images for validation")
    parser.add_argument("--test", type=float, default=0.2, help="fraction of images for test")
    parser.add_argument("--seed", type=int, default=0, help="random seed (the result depends only on it and the data)")
    parser.add_argument("--folds", type=int, default=0,
                        help="also assign K grouped, stratified folds to the non-test images (0 = none)")
    parser.add_argument("--repeats", type=int, default=1, metavar="R",
                        help="with --folds: R fold assignments, each from its own seed derived from --seed, in "
                        "columns fold, fold_r1, ..., fold_r<R-1> (repeated cross-validation, `medclf cv`)")
    parser.add_argument("--classes", type=_csv_list, default=None,
                        help="class order, comma-separated, e.g. no,yes; None = sorted class names")
    parser.add_argument("--positive", default=None,
                        help="the positive class; None = yes when the classes are no,yes, else no positive class")
    parser.add_argument("--label-map", default=None,
                        help="map labels to study classes: inline `mel=malignant,bcc=malignant,*=benign` "
                        "or a .csv (from,to) / .json / .yaml file; the original label goes to label_original")
    dup = parser.add_argument_group("duplicates (exact and near duplicates never cross splits)")
    dup.add_argument("--dedup", action=argparse.BooleanOptionalAction, default=True,
                     help="duplicate detection; --no-dedup turns it off (exact and near)")
    dup.add_argument("--near-dups", action=argparse.BooleanOptionalAction, default=True,
                     help="near duplicates (flipped, rotated, cropped, resized, re-lit or re-encoded copies) "
                     "as well as identical files; --no-near-dups keeps exact duplicates only")
    dup.add_argument("--dup-neighbours", type=int, default=DEFAULT_NEIGHBOURS, metavar="K",
                     help="candidates: each image's K most similar images are checked (default %(default)s)")
    dup.add_argument("--dup-min-inliers", type=int, default=DEFAULT_MIN_INLIERS, metavar="N",
                     help="a candidate pair is a duplicate when at least N keypoint matches agree with one "
                     "rotation/scale/shift (default %(default)s)")
    dup.add_argument("--duplicate-decisions", type=Path, default=None, metavar="CSV",
                     help="your verdicts, rows `path_a,path_b,same|different` (paths as in duplicates.csv); "
                     "they override the detector's; the file's SHA-256 goes into partition.json")
    dup.add_argument("--max-group-size", type=int, default=None, metavar="N",
                     help="warn about groups larger than N images (default: 1%% of the images, at least 20)")
    dup.add_argument("--near-dup-distance", type=int, default=None, help=argparse.SUPPRESS)  # retired, see run()
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing, different splits.csv/partition.json in --out (refused without "
                        "it; runs keep their own copy of the split they trained on)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or table")


def run(args):
    from medclf.core.errors import MedclfError
    from medclf.prepare.partition import PartitionOptions, leakage_free, partition

    if (args.data_root is None) == (args.metadata is None):
        raise MedclfError("pass exactly one of --data-root DIR (class folders) or --metadata CSV")
    if args.near_dup_distance is not None:
        # The dHash radius is gone; old commands and study files still run, with a note.
        if args.near_dup_distance < 0:
            args.near_dups = False
        print("medclf partition: warning: --near-dup-distance is retired (near duplicates are now found by "
              "nearest neighbours and verified by keypoint matching); "
              + ("read as --no-near-dups" if args.near_dup_distance < 0 else "ignored")
              + "; see --near-dups, --dup-min-inliers and --duplicate-decisions", file=sys.stderr)
    options = PartitionOptions(
        out=args.out, data_root=args.data_root, metadata=args.metadata, image_dir=args.image_dir,
        image_col=args.image_col, label_col=args.label_col, image_ext=args.image_ext, group_col=args.group_col,
        stratify_by=args.stratify_by,
        val=args.val, test=args.test, seed=args.seed, folds=args.folds, repeats=args.repeats, classes=args.classes,
        positive=args.positive, dedup=args.dedup, near_dups=args.near_dups, dup_neighbours=args.dup_neighbours,
        dup_min_inliers=args.dup_min_inliers, duplicate_decisions=args.duplicate_decisions,
        max_group_size=args.max_group_size, label_map=args.label_map, overwrite=args.overwrite, quiet=args.quiet,
    )
    info = partition(options)
    if not args.quiet:
        print_test_widths(args.out)
    return 0 if leakage_free(info) else 2


def print_test_widths(out):
    """How wide the test split's intervals will be (medclf plan --splits), before anyone trains."""
    from pathlib import Path

    from medclf.core.splits import read_splits
    from medclf.evaluate.sample_size import split_width_lines

    table = read_splits(Path(out) / "splits.csv")
    if len(table.rows("test")):
        for line in split_width_lines(table, "test"):
            print("expected precision, " + line)
