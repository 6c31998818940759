"""medclf crop: attention-guided crops of every image of a splits file (logic in medclf.explain.crop)."""

from medclf.commands.compute import add_compute_arguments, apply_threads

HELP = "crop every image around a run's Grad-CAM attention; writes the crops, boxes.csv and a new splits.csv"
DESCRIPTION = (
    "Stage 1 of the two-stage model: the Grad-CAM map of the run's predicted class is thresholded at "
    "mean + k * std, its largest connected component is boxed in a square (clipped inside the image) and the "
    "original, full-resolution image is cropped to it. A uniform map or an empty mask falls back to the centre "
    "square (stated in boxes.csv). OUT gets images/, boxes.csv, splits.csv and partition.json (every column kept, "
    "paths pointing at the crops: stage 2 is an ordinary `medclf train --splits OUT/splits.csv`) and crop.json. "
    "The originals are only read. See docs/derm_models.md."
)


def add_arguments(parser):
    from medclf.explain.crop import DEFAULT_K, DEFAULT_MARGIN, DEFAULT_MIN_SIDE

    parser.add_argument("--run", required=True, help="stage-1 run folder written by `medclf train` (results/NAME)")
    parser.add_argument("--splits", required=True, help="splits.csv whose images are cropped (all splits)")
    parser.add_argument("--out", required=True, help="new (or empty) folder outside the image folders")
    parser.add_argument("--k", type=float, default=DEFAULT_K, help="mask = attention > mean + k * std")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                        help="widen the box by this fraction of its side on each side")
    parser.add_argument("--min-side", dest="min_side", type=float, default=DEFAULT_MIN_SIDE,
                        help="smallest box side, as a fraction of the image's shorter side")
    parser.add_argument("--target-layer", dest="target_layer",
                        help="Grad-CAM layer, e.g. layer3 (default: the architecture's last conv block)")
    parser.add_argument("--data-root", help="folder the splits paths are relative to (default: partition.json's)")
    parser.add_argument("--batch-size", dest="batch", type=int, default=32, help="images per Grad-CAM batch")
    add_compute_arguments(parser)


def run(args):
    from medclf.explain.crop import run_crop

    apply_threads(args)
    summary = run_crop(args.run, args.splits, args.out, args.k, args.margin, args.min_side, args.target_layer,
                       args.data_root, args.device, args.batch, args.progress)
    sources = ", ".join(f"{n} {s}" for s, n in summary["sources"].items())
    print(f"{summary['n']} images cropped ({sources})")
    print(f"{args.out}/splits.csv")
    return 0
