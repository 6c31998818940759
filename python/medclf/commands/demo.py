"""medclf demo: the pipeline end to end on generated data (no download needed)."""

from pathlib import Path

HELP = "run the pipeline on a generated two-class MRI-like dataset (no download needed)"
DESCRIPTION = (
    "Generate a deterministic synthetic dataset (MRI-like phantoms with and without a faint, "
    "variable lesion, plus near-duplicate slices under other patient ids) under OUT/data, "
    "partition it into OUT/partition, organize it into OUT/organized, train a ResNet-18 from "
    "scratch (OUT/resnet18), predict the test split and write the R report "
    "(OUT/resnet18/report_test.md). The task is hard on purpose: expect an AUC well below 1 with a "
    "wide interval. About two to three minutes on a 2-core CPU."
)


def add_arguments(parser):
    parser.add_argument("--out", type=Path, default=Path("results/demo"), help="output folder")
    parser.add_argument("--n-per-class", type=int, default=80, help="images generated per class")
    parser.add_argument("--seed", type=int, default=0, help="seed for data generation and the split")
    parser.add_argument("--epochs", type=int, default=8, help="maximum training epochs")
    parser.add_argument("--img-size", type=int, default=64, help="training image size in pixels")
    parser.add_argument("--data-only", action="store_true", help="stop after partition and organize")
    parser.add_argument("--quiet", action="store_true", help="less output")


def run(args):
    from medclf.commands.registry import run_command
    from medclf.workflows.demo import run_demo

    run_demo(args.out, n_per_class=args.n_per_class, seed=args.seed, quiet=args.quiet, epochs=args.epochs,
             img_size=args.img_size, stop_after="organize" if args.data_only else None, runner=run_command)
    return 0
