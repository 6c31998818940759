"""medclf quality: image-quality measures, a gate calibrated on train, and a degradation study
(logic in medclf.quality.gate and medclf.quality.degradation)."""

from medclf.commands.compute import add_compute_arguments, apply_threads

HELP = "image quality: sharpness, contrast, exposure, blank slices; quality.csv, quality.json gate, degradation study"
DESCRIPTION = (
    "Measure every image of a splits file (or a folder): Laplacian variance and Tenengrad on a fixed-scale grey "
    "image, p1-p99 and RMS contrast, mean luminance, clipped dark/bright fractions, blank slices, and the "
    "original HAM10000 app's two checks. Thresholds come from the train split (a low percentile per measure) "
    "and are saved as quality.json for `medclf test --quality-gate`; test images never set them. "
    "--degrade adds the degradation study (blur, gamma, contrast, JPEG) on the run's test split. See docs/quality.md."
)


def add_arguments(parser):
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run folder (results/NAME): its splits file; outputs go into the run")
    source.add_argument("--splits", help="splits.csv: measure every split, calibrate on train")
    source.add_argument("--folder", help="a folder of images: quality.csv only (verdicts with --gate or --preset seed003)")
    parser.add_argument("--out", help="output folder (default: the run folder, or the splits file's folder; "
                                      "required with --folder)")
    parser.add_argument("--preset", default="calibrated", choices=["calibrated", "seed003"],
                        help="calibrated: thresholds from train; seed003: the HAM10000 app's fixed checks")
    parser.add_argument("--percentile", type=float, default=1.0,
                        help="calibration: a low measure fails below this percentile of train, a high one above "
                             "100 minus it")
    parser.add_argument("--gate", help="with --folder: a quality.json to judge the images with")
    parser.add_argument("--gate-out", dest="gate_out", help="where to write quality.json (default: OUT/quality.json)")
    parser.add_argument("--data-root", dest="data_root", help="image root (default: the splits file's)")
    parser.add_argument("--degrade", action="store_true",
                        help="with --run: the degradation study on the test split (degradation.png/json/csv)")
    add_compute_arguments(parser, amp_default="off (the degradation study predicts in fp32)")


def run(args):
    from medclf.quality.run import run_quality

    apply_threads(args)
    for line in run_quality(args.run, args.splits, args.folder, args.out, args.preset, args.percentile, args.gate,
                            args.gate_out, args.data_root, args.degrade, args.device, args.progress,
                            bool(args.amp)):
        print(line)
    return 0
